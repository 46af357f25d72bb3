"""A memory limit for a sandbox run's whole process tree, with a cgroup per slot.

RLIMIT_AS bounds each process, so 64 processes could still take 64 times the memory
limit between them. A memory cgroup bounds their sum: the kernel's out-of-memory killer
acts inside the cgroup, and its `oom_kill` counter tells the verdict what happened.

cgroup v1's memory controller (this is what the hosts here have) is used when the worker
runs as root and can create directories under its own memory cgroup. Elsewhere the tree
has no shared limit and the per-process rlimits remain (`available()` says why), which
the worker reports in its capabilities. cgroup v2 needs a delegated subtree from the
service manager; it is not wired yet.

Moving a process into a cgroup waits for an RCU grace period in the kernel (about 7 ms
here), so each slot's sandboxes are started from one thread that moved once (see
`_SlotSpawner` in runner.py). SANDBOX_TREE_MEMORY_LIMIT=0 turns the cgroup off.
"""

import contextlib
import errno
import os
import threading
from pathlib import Path

V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
GROUP_NAME = "switchyard-sandbox"
# Read from the environment: sandbox hosts run without Django settings.
SETTING = "SANDBOX_TREE_MEMORY_LIMIT"


def _own_memory_cgroup() -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return None


def _base() -> Path | None:
    own = _own_memory_cgroup()
    if own is None or not V1_MEMORY_ROOT.is_dir():
        return None
    return V1_MEMORY_ROOT / own.lstrip("/") / GROUP_NAME


def available() -> tuple[bool, str]:
    """(True, path) when tree-wide memory limits work here, else (False, the reason)."""
    if os.environ.get(SETTING, "1").strip().lower() in ("0", "false", "no", "off"):
        return False, f"turned off ({SETTING}=0): per-process memory limits only"
    if os.geteuid() != 0:
        return False, "the worker is not root: per-process memory limits only"
    base = _base()
    if base is None:
        return False, "no cgroup v1 memory controller: per-process memory limits only"
    try:
        base.mkdir(exist_ok=True)
    except OSError as error:
        return False, f"cannot create {base}: {error.strerror}"
    return True, str(base)


class SlotCgroup:
    """The memory cgroup of one sandbox slot, reused run after run."""

    def __init__(self, path: Path):
        self.path = path
        self._oom_kills_before = 0

    @classmethod
    def for_slot(cls, slot: int) -> "SlotCgroup | None":
        ok, where = available()
        return cls(Path(where) / f"slot-{slot}") if ok else None

    def prepare(self, *, limit_bytes: int) -> None:
        """Set the limit for the next run."""
        self.path.mkdir(exist_ok=True)
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            # memsw may never be below the memory limit: lift it, set the limit, then bound
            # memory plus swap too, or the tree could page out past its limit.
            swap.write_text("-1")
        try:
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            # More is still charged than the new limit (page cache of earlier runs): reclaim it.
            # Not done every run: the cached interpreter files would then be read again each time.
            (self.path / "memory.force_empty").write_text("0")
            (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        if swap.exists():
            swap.write_text(str(limit_bytes))
        (self.path / "memory.max_usage_in_bytes").write_text("0")
        self._oom_kills_before = self.oom_kills()

    def join_thread(self) -> None:
        """Move the calling thread (not its process) into the cgroup; what it forks is born inside."""
        (self.path / "tasks").write_text(str(threading.get_native_id()))

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def oom_killed_during_run(self) -> bool:
        return self.oom_kills() > self._oom_kills_before

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        return []
