"""Where bwrap is started for a run: a thread of the slot's own, with the slot's uid, in its cgroup v1.

The worker must never fork itself for a run. A fork that runs code in the child (subprocess's
`preexec_fn`, or `user=`/`group=`, which also rule out vfork) copies the worker's page tables and
takes copy-on-write faults for the pages the child touches: 2.5-4 ms per run, a third of the
sandbox's whole cost over a bare interpreter start. subprocess's vfork path (no preexec_fn, no
credential change) costs 0.2-0.6 ms, so what a run needs is arranged in the thread that starts
bwrap, and the child inherits it:

- the slot's uid: Linux keeps credentials per thread. The C library changes every thread of a
  process at once, so the slot's thread changes only itself, with the raw system calls (their
  numbers from libseccomp, as the seccomp filter's), and keeps the slot's uid and gid and no
  supplementary group for its whole life. It never goes back to root; the worker's other threads
  stay root. bwrap, started from it, runs as the slot's uid with no capabilities.
- the slot's cgroup v1: the thread joins it (decision 0010); what it starts is born inside.

The thread also sets the run's rlimits on the sandbox's first process (runner._limit_sandbox):
being the slot's uid, it may lower them without CAP_SYS_RESOURCE, which root in a container
usually lacks. A cgroup v2 holds processes, not threads: the runner moves the sandbox's first
process into it (as root) before bwrap is let go on (runner._release_sandbox).

A worker that is not root runs every sandbox as its own user, from the calling thread.
"""

import concurrent.futures
import ctypes
import functools
import os
from collections.abc import Callable
from typing import TypeVar

from workers.sandbox.cgroups import SlotCgroup

Started = TypeVar("Started")

# The thread-local forms of setgroups/setresgid/setresuid, in the order they must run.
CREDENTIAL_CALLS = ("setgroups", "setresgid", "setresuid")


@functools.cache
def credential_syscalls() -> tuple[int, int, int] | None:
    """This architecture's numbers for CREDENTIAL_CALLS, or None where libseccomp cannot name them."""
    try:
        import pyseccomp as seccomp

        return tuple(int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)) for name in CREDENTIAL_CALLS)
    except (ImportError, OSError, ValueError, RuntimeError):
        return None


def _become_slot_user(uid: int) -> None:
    """The calling thread, and only it, becomes `uid` (real, effective and saved), with no groups."""
    numbers = credential_syscalls()
    if numbers is None:
        raise OSError("the system calls that switch one thread's uid cannot be named here (libseccomp)")
    setgroups, setresgid, setresuid = numbers
    libc = ctypes.CDLL(None, use_errno=True)
    for number, arguments in ((setgroups, (0, None)), (setresgid, (uid, uid, uid)), (setresuid, (uid, uid, uid))):
        if libc.syscall(number, *arguments) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"could not switch the slot's thread to uid {uid}: {os.strerror(error)}")


class _SlotThread:
    """The thread that starts a slot's sandboxes, as the slot's uid and in its cgroup v1 (if any).

    It lives as long as the process: bwrap's --die-with-parent is tied to the thread that started
    it (PR_SET_PDEATHSIG), so a thread that ended would kill the sandboxes it had started.
    """

    def __init__(self, uid: int, cgroup_v1: SlotCgroup | None):
        self.uid = uid
        self.cgroup_v1 = cgroup_v1
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sandbox-slot", initializer=self._initialize
        )

    def _initialize(self) -> None:
        if self.cgroup_v1 is not None:
            self.cgroup_v1.join_thread()  # needs root: before the switch
        _become_slot_user(self.uid)

    def run(self, start: Callable[[], Started]) -> Started:
        return self._executor.submit(start).result()


# Keyed by pid too: a forked worker child has neither its parent's threads nor its slots.
_threads: dict[tuple[int, int], _SlotThread] = {}


def as_slot(slot: int, uid: int | None, cgroup: SlotCgroup | None, start: Callable[[], Started]) -> Started:
    """`start()` in the slot's thread (as `uid`, in the slot's cgroup v1); with no uid, right here."""
    if uid is None:
        return start()
    key = (os.getpid(), slot)
    if key not in _threads:
        _threads[key] = _SlotThread(uid, cgroup if cgroup is not None and cgroup.version == 1 else None)
    try:
        return _threads[key].run(start)
    except concurrent.futures.BrokenExecutor as error:
        # Its set-up failed (logged by the executor); the next run tries a new thread.
        del _threads[key]
        raise OSError(f"the slot's thread could not be set up: {error}") from error
