"""Whole-run limits and measurements for a sandbox run's process tree, with a cgroup per slot.

RLIMIT_AS and RLIMIT_CPU bound each process: 64 processes could take 64 times the memory limit
between them, children taking turns could each stay under the CPU limit, and memory held in
memfds or tmpfs pages is in no process's address space at all. A cgroup bounds and measures
their sum: memory (the kernel's out-of-memory killer acts inside the cgroup and counts its
kills) and CPU time (the runner reads the cgroup's CPU clock while the run goes on and stops it
at the limit; at the end it is the run's whole CPU time, children never waited for included).

Two layouts are supported, both needing a worker that runs as root:

- cgroup v2 (what systemd and Docker give today): `SANDBOX_CGROUP` names a cgroup directory
  delegated to the worker (writable, with `memory` and `cpu` in its `cgroup.controllers`).
  The worker moves itself into `<dir>/worker` (a cgroup with processes cannot hand controllers
  to children), enables the controllers for the children and makes `<dir>/slot-N` per slot.
  Without the setting, the worker's own cgroup's parent is tried the same way.
- cgroup v1 (older hosts, this development machine): the `memory` and `cpuacct` hierarchies,
  each with `switchyard-sandbox/slot-N` under the worker's own cgroup.

`available()` says which, or why neither. A worker without either refuses to start unless
SANDBOX_ACCEPT_WEAK_LIMITS=1 (workers/sandbox/app.py); SANDBOX_TREE_MEMORY_LIMIT=0 turns the
cgroups off (for measurements). Slots are unique per host (slots.py), so a slot's cgroup is
used by one run at a time.
"""

import contextlib
import errno
import os
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_MEMORY_ROOT = CGROUP_ROOT / "memory"
V1_CPUACCT_ROOT = CGROUP_ROOT / "cpuacct"
GROUP_NAME = "switchyard-sandbox"
# Read from the environment: sandbox hosts run without Django settings.
SETTING = "SANDBOX_TREE_MEMORY_LIMIT"
V2_SETTING = "SANDBOX_CGROUP"
ACCEPT_WEAK_SETTING = "SANDBOX_ACCEPT_WEAK_LIMITS"


def _off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def weak_limits_accepted() -> bool:
    return os.environ.get(ACCEPT_WEAK_SETTING, "").strip().lower() in ("1", "true", "yes", "on")


def _own_cgroups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _v2_mounted() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").is_file()


def _v2_base() -> tuple[Path | None, str]:
    configured = os.environ.get(V2_SETTING, "").strip()
    if configured:
        base = Path(configured)
    else:
        own = _own_cgroups().get("")
        if own is None or own == "/":
            return None, "the worker is in the root cgroup v2; set SANDBOX_CGROUP to a delegated cgroup"
        base = CGROUP_ROOT / own.lstrip("/")
        if base.name == "worker":
            base = base.parent  # moved there by an earlier start of this worker
    try:
        controllers = (base / "cgroup.controllers").read_text().split()
    except OSError as error:
        return None, f"cannot read {base}/cgroup.controllers: {error.strerror}"
    missing = {"memory", "cpu"} - set(controllers)
    if missing:
        return None, f"{base} is not delegated the {' and '.join(sorted(missing))} controller(s)"
    return base, str(base)


def _v1_bases() -> tuple[tuple[Path, Path] | None, str]:
    own = _own_cgroups()
    if "memory" not in own or not V1_MEMORY_ROOT.is_dir():
        return None, "no cgroup v1 memory controller"
    if "cpuacct" not in own or not V1_CPUACCT_ROOT.is_dir():
        return None, "no cgroup v1 cpuacct controller"
    memory = V1_MEMORY_ROOT / own["memory"].lstrip("/") / GROUP_NAME
    cpuacct = V1_CPUACCT_ROOT / own["cpuacct"].lstrip("/") / GROUP_NAME
    return (memory, cpuacct), str(memory)


_v2_lock = threading.Lock()


def _v2_prepare(base: Path) -> None:
    """Move this worker's processes into `<base>/worker` and enable memory and cpu for children."""
    with _v2_lock:
        leaf = base / "worker"
        leaf.mkdir(exist_ok=True)
        for pid in (base / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                (leaf / "cgroup.procs").write_text(pid)
        enabled = (base / "cgroup.subtree_control").read_text().split()
        if not {"memory", "cpu"} <= set(enabled):
            (base / "cgroup.subtree_control").write_text("+memory +cpu")


def available() -> tuple[bool, str]:
    """(True, "v2:<dir>" or "v1:<dir>") when whole-run limits work here, else (False, the reason)."""
    if _off(SETTING):
        return False, f"turned off ({SETTING}=0): per-process limits only"
    if os.geteuid() != 0:
        return False, "the worker is not root: per-process limits only"
    if _v2_mounted():
        base, detail = _v2_base()
        if base is None:
            return False, detail
        try:
            _v2_prepare(base)
        except OSError as error:
            return False, f"cannot use {base}: {error.strerror}"
        return True, f"v2:{base}"
    bases, detail = _v1_bases()
    if bases is None:
        return False, f"{detail}: per-process limits only"
    for base in bases:
        try:
            base.mkdir(exist_ok=True)
        except OSError as error:
            return False, f"cannot create {base}: {error.strerror}"
    return True, f"v1:{bases[0]}"


class SlotCgroup:
    """The cgroup(s) of one sandbox slot, reused run after run."""

    version = 0

    def __init__(self, slot: int):
        self.slot = slot
        self._oom_kills_before = 0
        self._cpu_before = 0.0

    @classmethod
    def for_slot(cls, slot: int) -> "SlotCgroup | None":
        ok, where = available()
        if not ok:
            return None
        version, _, path = where.partition(":")
        if version == "v2":
            return V2SlotCgroup(slot, Path(path))
        bases, _ = _v1_bases()
        assert bases is not None
        return V1SlotCgroup(slot, *bases)

    # What each layout provides.
    def _set_memory_limit(self, limit_bytes: int) -> None:
        raise NotImplementedError

    def _reset_peak(self) -> None:
        raise NotImplementedError

    def cpu_seconds_total(self) -> float:
        raise NotImplementedError

    def peak_bytes(self) -> int:
        raise NotImplementedError

    def oom_kills(self) -> int:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def join_thread(self) -> None:
        """v1: move the calling thread (not its process) in; what it forks is born inside."""

    def adopt(self, pid: int) -> None:
        """v2: move process `pid` in (the sandbox's first process, before it forks the program)."""

    def prepare(self, *, limit_bytes: int) -> None:
        """Set the limit for the next run, and take the counters' starting points."""
        self._set_memory_limit(limit_bytes)
        self._reset_peak()
        self._oom_kills_before = self.oom_kills()
        self._cpu_before = self.cpu_seconds_total()

    def cpu_seconds_used(self) -> float:
        """CPU time of every process of the run so far, user and system, waited for or not."""
        return max(self.cpu_seconds_total() - self._cpu_before, 0.0)

    def oom_killed_during_run(self) -> bool:
        return self.oom_kills() > self._oom_kills_before


class V1SlotCgroup(SlotCgroup):
    version = 1

    def __init__(self, slot: int, memory_base: Path, cpuacct_base: Path):
        super().__init__(slot)
        self.path = memory_base / f"slot-{slot}"
        self.cpuacct = cpuacct_base / f"slot-{slot}"
        self.path.mkdir(exist_ok=True)
        self.cpuacct.mkdir(exist_ok=True)

    def _set_memory_limit(self, limit_bytes: int) -> None:
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

    def _reset_peak(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def join_thread(self) -> None:
        native_id = str(threading.get_native_id())
        (self.path / "tasks").write_text(native_id)
        (self.cpuacct / "tasks").write_text(native_id)

    def cpu_seconds_total(self) -> float:
        return int((self.cpuacct / "cpuacct.usage").read_text()) / 1e9

    def peak_bytes(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        return []


class V2SlotCgroup(SlotCgroup):
    version = 2

    def __init__(self, slot: int, base: Path):
        super().__init__(slot)
        self.path = base / f"slot-{slot}"
        self.path.mkdir(exist_ok=True)

    def _set_memory_limit(self, limit_bytes: int) -> None:
        (self.path / "memory.max").write_text(str(limit_bytes))
        # No swap: the tree's memory is the limit, not the limit plus whatever it can page out.
        with contextlib.suppress(FileNotFoundError):
            (self.path / "memory.swap.max").write_text("0")

    def _reset_peak(self) -> None:
        # memory.peak is reset per open file by writing to it (Linux 6.12+); older kernels keep the
        # cgroup's lifetime peak, so a slot's peak then covers its earlier runs too.
        with contextlib.suppress(OSError):
            (self.path / "memory.peak").write_text("0")

    def adopt(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def cpu_seconds_total(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) / 1e6
        return 0.0

    def peak_bytes(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / "memory.peak").read_text())
        return 0

    def oom_kills(self) -> int:
        for line in (self.path / "memory.events").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        return []
