"""`make run`'s processes: the Procfile under supervisord, the URLs they serve, and the stack's runtime paths.

supervisord restarts a process that dies (a worker killed by the OOM killer, a SIGKILL)
while the others keep running; honcho, which ran the Procfile before, stops the whole
stack when any process exits (docs/decisions/0041). The Procfile stays the one list of
processes: each line runs as `/bin/sh -c 'exec LINE'`, so `${VAR:-default}` expands as it
did under honcho and supervisord watches the process itself, not a shell around it.

Everything a stack writes at run time (supervisord's socket, pid and log, gunicorn's control
socket, the beat schedule, Flower's state) lives under its data dir (`.data/` or
SWITCHYARD_DATA_DIR), so two stacks on one machine share none of it.

This module imports no Django: settings read `flower_url()` from it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from apps.core import devservices

REPO_ROOT = devservices.REPO_ROOT
# Addresses that mean "every interface": a browser on this machine reaches them at loopback.
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]", "*"}  # noqa: S104 (recognised, not bound)
# Seconds a process gets to stop after SIGTERM before its process group is killed. Celery's
# warm shutdown finishes running tasks within it or leaves them to the lease (docs/jobs.md).
STOP_WAIT_SECONDS = 15
# SIGTERM, unless a process stops cleanly only on another signal. celery beat's SIGTERM handler
# closes its schedule file and raises SystemExit wherever beat is, which mid-publish ends in
# "invalid operation on closed shelf" and exit 1; on SIGINT it finishes the tick and syncs.
STOP_SIGNALS = {"beat": "INT"}
# All programs in one group: supervisord stops a group's programs at once, but one group after
# another, which would make Ctrl-C take the sum of every process's shutdown instead of the longest.
GROUP = "stack"


def runtime_dir() -> Path:
    """Sockets, pid files and logs of this stack's process manager."""
    return devservices.DATA_DIR / "run"


def web_bind() -> str:
    return os.environ.get("WEB_BIND") or "127.0.0.1:8000"


def web_url(bind: str | None = None) -> str:
    """The URL a browser on this machine opens for gunicorn's `--bind` value."""
    bind = bind or web_bind()
    if bind.startswith(("unix:", "fd://")):
        return bind
    host, _, port = bind.rpartition(":")
    return _http_url(host, port or "8000")


def flower_url() -> str:
    """Flower's URL as the Procfile starts it (FLOWER_ADDRESS, FLOWER_PORT)."""
    return _http_url(os.environ.get("FLOWER_ADDRESS") or "127.0.0.1", os.environ.get("FLOWER_PORT") or "5555")


def _http_url(host: str, port: str) -> str:
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}"


def read_procfile(path: Path) -> dict[str, str]:
    """Process name -> command line, in file order (blank lines and # comments skipped)."""
    processes = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not name.strip() or not command.strip():
            raise ValueError(f"{path}:{number}: expected 'name: command'")
        processes[name.strip()] = command.strip()
    return processes


def _ini(value: str) -> str:
    # supervisord's configuration expands %(name)s: a literal % (celery's -n cpu-$$@%h) is %%.
    return value.replace("%", "%%")


def supervisord_config(processes: dict[str, str], *, run_dir: Path, workdir: Path = REPO_ROOT) -> str:
    """supervisord's configuration for these processes, in the foreground, logging to its stdout."""
    sections = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_ini(str(run_dir / 'supervisord.log'))}",
        f"pidfile={_ini(str(run_dir / 'supervisord.pid'))}",
        f"childlogdir={_ini(str(run_dir))}",
        "",
        # The control socket: `supervisorctl -c .data/run/supervisord.conf status` (0700: this user only).
        "[unix_http_server]",
        f"file={_ini(str(run_dir / 'supervisor.sock'))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(run_dir / 'supervisor.sock'))}",
        "",
    ]
    for name, command in processes.items():
        sections += [
            f"[program:{name}]",
            f"command=/bin/sh -c {_ini(shlex.quote('exec ' + command))}",
            f"directory={_ini(str(workdir))}",
            "autostart=true",
            # Whatever the exit code: a stopped process is always a surprise while the stack runs.
            "autorestart=true",
            # A process that dies within startsecs of starting is retried startretries times and then
            # left FATAL (a configuration error, e.g. a sandbox host without cgroups), with the rest running.
            "startsecs=3",
            "startretries=3",
            f"stopsignal={STOP_SIGNALS.get(name, 'TERM')}",
            f"stopwaitsecs={STOP_WAIT_SECONDS}",
            # A worker's pool children and gunicorn's workers stop (and die) with their main process,
            # as they did under honcho, which signalled each process group.
            "stopasgroup=true",
            "killasgroup=true",
            "stdout_logfile=/dev/stdout",
            "stdout_logfile_maxbytes=0",
            "redirect_stderr=true",
            "",
        ]
    sections += [f"[group:{GROUP}]", f"programs={','.join(processes)}", ""]
    return "\n".join(sections)


def banner() -> str:
    web = web_url()
    return "\n".join(
        [
            f"web:    {web}  (admin at /admin/, API at /api/v1/, docs at /api/docs/)",
            f"flower: {flower_url()}  (same login)",
            f"processes: supervisorctl -c {runtime_dir() / 'supervisord.conf'} status   (a dead one is restarted)",
            "Ctrl-C stops everything.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apps.core.stack",
        description="Run the Procfile's processes under supervisord (what `make run` does after migrating): "
        "a process that dies is restarted, Ctrl-C stops them all. Prints the URLs they serve, from WEB_BIND, "
        "FLOWER_ADDRESS and FLOWER_PORT.",
    )
    parser.add_argument("--procfile", type=Path, default=REPO_ROOT / "Procfile", help="default: the repo's Procfile")
    parser.add_argument("--print-config", action="store_true", help="print supervisord's configuration and exit")
    args = parser.parse_args(argv)

    run_dir = runtime_dir()
    config = supervisord_config(read_procfile(args.procfile), run_dir=run_dir)
    if args.print_config:
        print(config)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "supervisord.conf"
    config_path.write_text(config)
    print(banner(), flush=True)
    supervisord = shutil.which("supervisord") or str(Path(sys.executable).with_name("supervisord"))
    # exec: Ctrl-C and SIGTERM reach supervisord itself, which stops every program in order.
    os.execv(supervisord, [supervisord, "-c", str(config_path)])  # noqa: S606 (no shell wanted)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
