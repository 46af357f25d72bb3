"""The seccomp filter every sandboxed program runs under: kernel interfaces it has no use for fail with EPERM.

Namespaces, a read-only system and an unprivileged uid keep a program away from the host's
files, network and processes; what they leave is the kernel's own attack surface and a few
ways to disturb the run itself. Hostile programs found: ptrace of bwrap's init froze the run
until the wall limit; io_uring, keyctl, bpf, userfaultfd and netlink were open. The filter
(generated with libseccomp through the pyseccomp bindings, docs/decisions/0031) allows
everything else and answers these with EPERM, so a program that tries one gets an ordinary
error and the run goes on:

- debugging other processes: ptrace, process_vm_readv/writev, kcmp, pidfd_getfd;
- kernel interfaces with a record of privilege escalations: io_uring_*, bpf, userfaultfd,
  perf_event_open, keyctl/add_key/request_key;
- namespaces and mounts: unshare, setns, clone with any CLONE_NEW* flag, mount and the new
  mount API, pivot_root, chroot; clone3 answers ENOSYS instead (its flags are in memory a
  filter cannot read), so the C library falls back to clone, which is checked;
- the machine: kexec_*, init/finit/delete_module, reboot, swapon/off, acct, quotactl,
  settimeofday/clock_settime/adjtimex, syslog, vhangup, personality;
- sockets of the AF_NETLINK family (the sandbox has no network; netlink is kernel interface).

The BPF program is built once per process and handed to bubblewrap (`--seccomp FD`), which
applies it to the program just before exec, with no_new_privs.
"""

import contextlib
import errno
import functools
import os

SYSCALLS_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "vhangup",
    "personality",
)
# clone's first argument (x86_64): the CLONE_NEW* flags, each refused.
CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
AF_NETLINK = 16


class SeccompUnavailable(RuntimeError):
    """The seccomp filter cannot be built here (libseccomp or its bindings missing)."""


@functools.cache
def filter_bpf() -> bytes:
    """The filter as a BPF program for the running architecture, in bubblewrap's `--seccomp` format."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as error:  # OSError: libseccomp.so.2 not found by the bindings
        raise SeccompUnavailable(f"libseccomp bindings unavailable: {error}") from error
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in SYSCALLS_DENIED:
        try:
            rules.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            # A call this architecture or libseccomp version does not know: nothing to deny.
            continue
    with contextlib.suppress(ValueError, RuntimeError, OSError):  # no clone3 here: clone is the only way
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NEW_FLAGS:
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, AF_NETLINK))
    memfd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with open(memfd, "w+b", closefd=False) as exported:
            rules.export_bpf(exported)
        os.lseek(memfd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(memfd, 65536):
            chunks.append(chunk)
    finally:
        os.close(memfd)
    program = b"".join(chunks)
    if not program or len(program) % 8:
        raise SeccompUnavailable(f"libseccomp exported a malformed BPF program ({len(program)} bytes)")
    return program
