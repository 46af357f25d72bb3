"""Inside a judge case's sandbox: run the program, then hand back the files it left in its output folder.

Run by the sandbox's own interpreter as `/code/harness.py FD FOLDER MAX_FILES MAX_BYTES -- PROGRAM...`
(standard library only, no project import). The program is its child; once it has ended, the
files under FOLDER (relative to /work) go to FD, a pipe the worker reads, as a JSON header line
per file followed by its bytes, then `{"end": true}`. The harness then ends the way the program
did (its exit code, or the same signal), so the run's verdict is the program's.

The program is hostile and shares this sandbox, so:
- FD is close-on-exec and the harness is not dumpable: the program can neither inherit the pipe
  nor open it through /proc/<harness>/fd and forge files;
- nothing is followed: the folder is opened one component at a time with O_NOFOLLOW, entries are
  lstat'ed, symlinks, devices, FIFOs and sockets are reported as skipped and never opened, and a
  file is read through an O_NOFOLLOW|O_NONBLOCK descriptor checked again with fstat;
- the count, the total size, the depth and the entries looked at are capped while walking, not after.
"""

import ctypes
import itertools
import json
import os
import signal
import stat
import sys

PR_SET_DUMPABLE = 4
MAX_DEPTH = 8
# Entries looked at in all (files, folders, links): a folder of a million empty files or links
# must not keep the case running until its wall limit.
MAX_ENTRIES = 4096
READ_CHUNK = 65536


def _not_dumpable() -> None:
    # A non-dumpable process's /proc/<pid>/fd belongs to root: the program (same uid, no
    # capabilities) cannot open our end of the pipe through it.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_folder(folder: str) -> int | None:
    """The output folder as a directory fd, each component opened without following a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    current = os.open(".", flags)
    for part in folder.split("/"):
        try:
            child = os.open(part, flags, dir_fd=current)
        except OSError:
            os.close(current)
            return None
        os.close(current)
        current = child
    return current


def _read_file(name: str, dir_fd: int, limit: int) -> bytes | None:
    """At most `limit` + 1 bytes of a regular file, never following a link; None if it is not one."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def collect(out: int, folder: str, max_files: int, max_bytes: int) -> None:
    folder_fd = _open_folder(folder)
    if folder_fd is None:
        _write(out, json.dumps({"end": True, "missing": True}).encode() + b"\n")
        return
    files = used = seen = 0
    truncated = False
    stack = [("", folder_fd, 0)]
    while stack:
        prefix, dir_fd, depth = stack.pop()
        try:
            with os.scandir(dir_fd) as entries:
                # Never more names than the budget left, however large the folder.
                names = sorted(itertools.islice((entry.name for entry in entries), MAX_ENTRIES - seen + 1))
            for name in names:
                seen += 1
                if seen > MAX_ENTRIES:
                    truncated = True
                    break
                path = prefix + name
                try:
                    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
                except OSError:
                    continue
                if stat.S_ISDIR(mode):
                    if depth + 1 >= MAX_DEPTH:
                        truncated = True
                        continue
                    try:
                        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                    except OSError:
                        continue
                    stack.append((path + "/", child, depth + 1))
                    continue
                if not stat.S_ISREG(mode):
                    kind = "symlink" if stat.S_ISLNK(mode) else "not a regular file"
                    _write(out, json.dumps({"path": path, "skipped": kind}).encode() + b"\n")
                    continue
                if files >= max_files:
                    truncated = True
                    continue
                data = _read_file(name, dir_fd, max_bytes - used)
                if data is None:
                    continue
                if used + len(data) > max_bytes:
                    truncated = True
                    continue
                files += 1
                used += len(data)
                _write(out, json.dumps({"path": path, "size": len(data)}).encode() + b"\n" + data)
        finally:
            os.close(dir_fd)
    _write(out, json.dumps({"end": True, "truncated": truncated}).encode() + b"\n")


def main(argv: list[str]) -> None:
    out, folder, max_files, max_bytes = int(argv[1]), argv[2], int(argv[3]), int(argv[4])
    program = argv[argv.index("--") + 1 :]
    os.set_inheritable(out, False)
    _not_dumpable()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        print(f"harness: cannot create the output folder {folder}: {error}", file=sys.stderr)
    pid = os.posix_spawn(program[0], program, os.environ)
    _, status = os.waitpid(pid, 0)
    try:
        collect(out, folder, max_files, max_bytes)
    except OSError as error:
        print(f"harness: collecting {folder} failed: {error}", file=sys.stderr)
    os.close(out)
    sys.stdout.flush()
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv)
