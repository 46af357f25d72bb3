# Inside a judge case's sandbox started ahead of its turn: the interpreter waits, then runs the program.
#
# Run as `python -I -S -u /code/start.py GO_FD` (standard library only, no project import, and no
# import at all: every name used here is loaded by the interpreter's own start, so the program
# finds sys.modules as a direct `python -I -S -u /code/main.pyc` leaves it). The sandbox, its
# mounts and this interpreter are set up while the previous case runs; the worker releases the
# case by writing to GO_FD, and the program's bytecode then runs in this interpreter as
# `__main__`, with the globals, sys.argv, __file__ and __loader__ of a direct run. EOF on GO_FD
# (the case is not run: the submission was cancelled or failed) ends the sandbox without running
# anything. No docstring on purpose: it would become the program's __main__.__doc__.
#
# The program shares this process, which holds nothing: GO_FD is closed before the program
# starts, and the worker's end of the pipe is on the host. An uncaught exception is printed
# without this file's frames (sys.excepthook, exit status 1), SystemExit ends the run as it ends
# a direct one; only an uncaught KeyboardInterrupt shows this file's frames in its traceback.

import marshal
import posix
import sys

PROGRAM = "/code/main.pyc"
# The header of a .pyc: magic, flags, and the source's timestamp and size (or hash).
PYC_HEADER_BYTES = 16


def _wait_and_run(go_fd: int, sys=sys, posix=posix, marshal=marshal, program_path=PROGRAM) -> None:
    # Everything is a local: the module's globals become the program's before it runs.
    starter = _wait_and_run.__code__.co_filename
    with open(program_path, "rb") as program:
        code = marshal.loads(program.read()[PYC_HEADER_BYTES:])
    loader = sys.modules["_frozen_importlib_external"].SourcelessFileLoader("__main__", program_path)
    released = posix.read(go_fd, 1)
    posix.close(go_fd)
    if not released:
        posix._exit(0)
    # __main__'s globals as a direct run of the .pyc has them, in the same order.
    main = sys.modules["__main__"].__dict__
    kept = {name: main[name] for name in ("__name__", "__doc__", "__package__", "__loader__", "__spec__")}
    kept.update(__annotations__={}, __builtins__=main["__builtins__"], __file__=program_path, __cached__=None)
    kept["__loader__"] = loader
    main.clear()
    main.update(kept)
    sys.argv[:] = [program_path]
    try:
        exec(code, main)  # noqa: S102 - the sandboxed program itself
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as error:
        traceback = error.__traceback__
        while traceback is not None and traceback.tb_frame.f_code.co_filename == starter:
            traceback = traceback.tb_next
        error = error.with_traceback(traceback)
        sys.last_type, sys.last_value, sys.last_traceback = type(error), error, traceback
        sys.excepthook(type(error), error, traceback)
        raise SystemExit(1) from None


_wait_and_run(int(sys.argv[1]))
