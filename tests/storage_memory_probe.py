"""Run in its own process by the storage tests: a large file through the artifact storage (store, fetch into the
host cache with its digest checked, stream out as a download), printing RSS before and its peak after each step
(VmHWM, reset after start-up) as JSON.

    python -m tests.storage_memory_probe WORKDIR SIZE_BYTES    (ARTIFACT_STORAGE_URL etc. from the environment)
"""

import hashlib
import json
import sys
from pathlib import Path


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> float:
    """Set the peak (VmHWM) to the current RSS, so what start-up allocated and freed cannot hide a later peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def main(workdir: Path, size: int) -> dict:
    import django

    django.setup()
    from apps.core import artifact_storage

    big = workdir / "big.bin"
    with big.open("wb") as out:
        out.truncate(size)  # sparse: no disk or memory spent making it
    # Every module, thread pool and connection in place before the baseline is taken.
    artifact_storage.store_bytes("warm-up/small.bin", b"w" * 4096)
    with artifact_storage.stored_open("warm-up/small.bin") as warm:
        warm.read()
    digest = hashlib.sha256()
    with big.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    figures = {"baseline_mib": reset_peak_rss()}

    artifact_storage.store_local_file("big/big.bin", big)
    figures["after_store_mib"] = peak_rss_mib()
    copy = artifact_storage.local_copy("big/big.bin", sha256=digest.hexdigest())
    figures["after_fetch_mib"] = peak_rss_mib()
    response = artifact_storage.stored_file_response("big/big.bin", size=size, content_type="application/x-npz")
    sent = sum(len(chunk) for chunk in response.streaming_content)
    response.close()
    figures["after_download_mib"] = peak_rss_mib()
    figures.update(size=size, sent=sent, copy_size=copy.stat().st_size, copy_in_cache=str(copy))
    return figures


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]))))
