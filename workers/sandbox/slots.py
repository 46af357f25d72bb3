"""Sandbox slots that are unique per host: each one a lock file held with flock while in use.

A slot is a host uid (BASE_UID + slot) and a memory cgroup. Two runs in one slot at once share
RLIMIT_NPROC's process count and the cgroup's memory, and a slot's clean-up (kill every process
of its uid) would end the neighbour's run. The slot number used to be the pool process's index,
so two workers on one host (or a second stack, or `make test` beside `make run`) each had a
slot 0 and killed each other's runs.

Now a process claims a slot by taking an exclusive, non-blocking flock on
`<SANDBOX_SLOT_DIR>/slot-N.lock`, the same directory for every worker and stack of the host
(default /run/switchyard-sandbox, or /tmp/switchyard-sandbox-<uid> when /run is not writable).
The kernel releases the lock when its holder dies, however it dies, so a slot is never leaked
and a holder is never doubted: whoever holds the lock is the only one running in the slot, and
what the slot's uid still runs then belongs to a dead holder, safe to kill.
"""

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SETTING = "SANDBOX_SLOT_DIR"
MAX_SLOTS = 256
# How long a run asking for one given slot waits for its holder (tests, the bench).
WAIT_FOR_SLOT_S = 120.0


class NoFreeSlot(RuntimeError):
    """Every slot of this host is held."""


def slot_dir() -> Path:
    configured = os.environ.get(SETTING, "").strip()
    if configured:
        path = Path(configured)
    elif os.access("/run", os.W_OK):
        path = Path("/run/switchyard-sandbox")
    else:
        path = Path(f"/tmp/switchyard-sandbox-{os.getuid()}")  # noqa: S108 - per-user, mode 0700
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _open(slot: int) -> int:
    return os.open(slot_dir() / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class _ProcessSlot:
    """The slot this process holds for its lifetime (a pool process runs one sandbox at a time)."""

    def __init__(self):
        self.pid: int | None = None
        self.slot: int | None = None
        self.fd: int | None = None
        self.lock = threading.Lock()

    def get(self) -> int:
        with self.lock:
            if self.pid != os.getpid() or self.slot is None:
                self.slot, self.fd = _claim_free()
                self.pid = os.getpid()
                logger.info("sandbox.slot_claimed", extra={"slot": self.slot, "dir": str(slot_dir())})
            return self.slot

    def forget_after_fork(self) -> None:
        # A forked child shares the lock with its parent through the inherited descriptor; it
        # claims its own slot, and must not keep the parent's locked after the parent lets go.
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.pid = self.slot = self.fd = None
        self.lock = threading.Lock()


_process_slot = _ProcessSlot()
os.register_at_fork(after_in_child=_process_slot.forget_after_fork)


def _claim_free() -> tuple[int, int]:
    for slot in range(MAX_SLOTS):
        fd = _open(slot)
        if _try_lock(fd):
            return slot, fd
        os.close(fd)
    raise NoFreeSlot(f"all {MAX_SLOTS} sandbox slots of this host are held (see {slot_dir()})")


def process_slot() -> int:
    """This process's own slot, claimed at first use and held until the process ends."""
    return _process_slot.get()


def holds_process_slot(slot: int) -> bool:
    return _process_slot.pid == os.getpid() and _process_slot.slot == slot


# Leases taken by a thread of this process: (pid, slot) -> thread id. A second lease of the same
# slot by the same thread is the same lease (flock would otherwise wait on ourselves).
_leases: dict[tuple[int, int], int] = {}


@contextlib.contextmanager
def _held(slot: int, fd: int) -> Iterator[int]:
    key = (os.getpid(), slot)
    _leases[key] = threading.get_ident()
    try:
        yield slot
    finally:
        _leases.pop(key, None)
        os.close(fd)  # closing the only descriptor of the open file releases the lock


@contextlib.contextmanager
def slot_lease(slot: int, *, wait_s: float = WAIT_FOR_SLOT_S) -> Iterator[int]:
    """Hold the given slot for the block, waiting while another process or thread holds it."""
    if holds_process_slot(slot) or _leases.get((os.getpid(), slot)) == threading.get_ident():
        yield slot
        return
    fd = _open(slot)
    deadline = time.monotonic() + wait_s
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            os.close(fd)
            raise NoFreeSlot(f"sandbox slot {slot} stayed held for {wait_s:.0f} s")
        time.sleep(0.02)
    with _held(slot, fd):
        yield slot


def held_by_this_process() -> list[int]:
    """Every slot this process holds now: its own, and those leased by any of its threads."""
    pid = os.getpid()
    held = [_process_slot.slot] if _process_slot.pid == pid and _process_slot.slot is not None else []
    return held + [slot for (owner, slot) in list(_leases) if owner == pid and slot not in held]


@contextlib.contextmanager
def free_slot_lease() -> Iterator[int]:
    """Hold the first free slot for the block (for the calling thread)."""
    slot, fd = _claim_free()
    with _held(slot, fd):
        yield slot
