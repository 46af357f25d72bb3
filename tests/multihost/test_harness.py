"""The harness's own promise: where the kernel refuses network namespaces, the multi-host tests skip saying so."""

import shutil
import subprocess
import sys

import pytest

from apps.core.devservices import REPO_ROOT

CHECK = """
from tests.multihost.harness import NamespacesRefused, check_namespaces_allowed
try:
    check_namespaces_allowed()
except NamespacesRefused as exc:
    print(exc)
else:
    print("allowed")
"""


def test_a_refused_ip_netns_add_is_reported_in_the_kernels_words():
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    # A user namespace's root has no CAP_SYS_ADMIN over the machine's mounts: `ip netns add` is refused.
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", CHECK],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip(f"no user namespaces to play an unprivileged host: {result.stderr.strip()}")
    assert result.stdout.startswith("`ip netns add` refused: "), result.stdout + result.stderr
    assert "not permitted" in result.stdout or "denied" in result.stdout, result.stdout
