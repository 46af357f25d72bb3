import pytest

from tests.multihost.harness import Cluster, NamespacesRefused, check_namespaces_allowed


@pytest.fixture(scope="module")
def cluster():
    """Four hosts in network namespaces, started once for the module and removed even when a test fails."""
    try:
        check_namespaces_allowed()
    except NamespacesRefused as exc:
        pytest.skip(f"multi-host tests need network namespaces: {exc}")
    hosts = Cluster()
    try:
        yield hosts.start()
    finally:
        hosts.stop()
