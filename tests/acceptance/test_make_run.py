"""`make run` as a person runs it (issues 21, 22): the URLs it prints, a killed worker restarted while web
keeps answering, Ctrl-C stopping everything, and worker node names unique per process."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from apps.core.stack import GROUP, read_procfile
from apps.core.worker_process import current_database_url
from apps.jobs.models import WorkerHost

# make run starts seven processes and a fresh PostgreSQL on a small, shared machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(settings.BASE_DIR)
SUPERVISORCTL = str(Path(sys.executable).with_name("supervisorctl"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(condition, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout}s\n{tail}")


def _http_status(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http URLs built here)
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "(gone)"


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _session_processes(sid: int) -> list[int]:
    """Live processes of the session: a zombie has exited and holds nothing; reaping an orphan
    is up to whatever it was reparented to (in a container, a PID 1 that may never reap)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and not _is_zombie(int(entry)):
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


class Stack:
    """`make run` in its own session, data dir and ports; `stop()` is Ctrl-C at a terminal."""

    def __init__(self):
        # A short path: unix sockets (PostgreSQL's, supervisord's, gunicorn's) allow 107 bytes.
        self.data_dir = Path(tempfile.mkdtemp(prefix="sy-run-"))
        self.data_dir.chmod(0o755)  # the embedded PostgreSQL runs as another user when we are root
        self.ports = {name: _free_port() for name in ("web", "flower", "pg", "redis")}
        self.log = self.data_dir / "make-run.log"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "SWITCHYARD_DATA_DIR": str(self.data_dir),
            "SWITCHYARD_PG_PORT": str(self.ports["pg"]),
            "SWITCHYARD_REDIS_PORT": str(self.ports["redis"]),
            "WEB_BIND": f"127.0.0.1:{self.ports['web']}",
            "FLOWER_PORT": str(self.ports["flower"]),
            # One process each: the machine running the suite is small.
            "WEB_WORKERS": "1",
            "CPU_CONCURRENCY": "1",
            "GPU_CONCURRENCY": "1",
            "SANDBOX_CONCURRENCY": "1",
            "SANDBOX_ACCEPT_WEAK_LIMITS": "1",
        }
        self.process: subprocess.Popen | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    def start(self) -> "Stack":
        with self.log.open("wb") as log:
            # `-o .venv/.installed`: the venv is the suite's own; make must not reinstall it.
            self.process = subprocess.Popen(
                ["make", "-o", ".venv/.installed", "run"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as at a terminal
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def supervisorctl(self, *args) -> str:
        conf = self.data_dir / "run" / "supervisord.conf"
        return subprocess.run(
            [SUPERVISORCTL, "-c", str(conf), *args], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    def pid(self, program: str) -> int:
        value = self.supervisorctl("pid", f"{GROUP}:{program}")
        return int(value) if value.isdigit() else 0

    def manage(self, *args, timeout: float = 240) -> subprocess.CompletedProcess:
        """manage.py against this stack's database and broker, as its user would run it."""
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env={**self.env, "DJANGO_SETTINGS_MODULE": "project.settings.local"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def interrupt(self, timeout: float = 180) -> int:
        """Ctrl-C: SIGINT to the foreground process group; make returns when everything has stopped."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        if self.process is not None:
            for pid in _session_processes(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # The embedded services detach (pg_ctl, daemonized Redis): stop them if Ctrl-C did not.
        subprocess.run(
            [sys.executable, "-m", "apps.core.devservices", "down"], cwd=REPO, env=self.env, capture_output=True
        )
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def stack():
    started = Stack()
    try:
        yield started
    finally:
        started.cleanup()


def test_make_run_restarts_a_killed_worker_while_web_answers_and_ctrl_c_stops_everything(stack):
    stack.start()
    _wait_for(lambda: _http_status(f"{stack.web_url}/healthz") == 200, 420, "web answering /healthz", stack.log)

    # The URLs printed are the ones served (WEB_BIND, FLOWER_PORT), not :8000 and :5555.
    output = stack.output()
    assert f"web:    {stack.web_url}  " in output, output[-3000:]
    assert f"flower: http://127.0.0.1:{stack.ports['flower']}  " in output
    banner = [line for line in output.splitlines() if line.startswith(("web:", "flower:"))]
    assert len(banner) == 2 and not any(":8000" in line or ":5555" in line for line in banner), banner
    _wait_for(lambda: _port_open(stack.ports["flower"]), 180, "flower listening", stack.log)

    first = _wait_for(lambda: stack.pid("worker-cpu"), 120, "worker-cpu running", stack.log)
    done = stack.manage("jobs", "submit", "sleep", "--params", '{"duration_s": 0.2}', "--wait", "--timeout", "180")
    assert done.returncode == 0, done.stdout + done.stderr + stack.output()[-3000:]

    # Web is polled from before the kill until the restarted worker has run a job.
    answers: list = []
    polling = threading.Event()
    polling.set()

    def poll():
        while polling.is_set():
            answers.append(_http_status(f"{stack.web_url}/healthz"))
            time.sleep(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        os.kill(first, signal.SIGKILL)  # the worker's main process, as the OOM killer would
        second = _wait_for(
            lambda: (pid := stack.pid("worker-cpu")) not in (0, first) and pid, 120, "worker-cpu restarted", stack.log
        )
        again = stack.manage("jobs", "submit", "sleep", "--params", '{"duration_s": 0.2}', "--wait", "--timeout", "180")
        assert again.returncode == 0, again.stdout + again.stderr + stack.output()[-3000:]
    finally:
        polling.clear()
        poller.join(10)
    assert len(answers) >= 3 and set(answers) == {200}, answers

    # Each worker process is its own node and its own WorkerHost row: the old one and the new one.
    workers = stack.manage("workers").stdout
    assert re.search(rf"^cpu-{first}@\S+", workers, re.M) and re.search(rf"^cpu-{second}@\S+ +yes", workers, re.M), (
        workers
    )
    statuses = stack.supervisorctl("status")
    assert all(" RUNNING " in line for line in statuses.splitlines() if "worker-sandbox" not in line), statuses

    # Ctrl-C: every process stops, then the embedded PostgreSQL and Redis that make run started.
    stack.interrupt()
    # A pool child of the worker killed above was orphaned with it: it exits once it sees its
    # parent gone, which on a loaded machine can be a moment after make has returned.
    deadline = time.monotonic() + 60
    while _session_processes(stack.process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session_processes(stack.process.pid)
    assert left == [], [(pid, _cmdline(pid)) for pid in left]
    for name, port in stack.ports.items():
        assert not _port_open(port), f"{name} still listening on {port}"
    output = stack.output()
    assert "stopped: beat (exit status 0)" in output or "stopped: beat (terminated by SIGINT)" in output, output[-3000:]
    # Runtime files of this stack under its data dir, none in a per-user place another stack would share.
    assert (stack.data_dir / "celerybeat-schedule.dat").exists() or (stack.data_dir / "celerybeat-schedule").exists()
    assert list(stack.data_dir.glob("flower.db*"))


@pytest.mark.django_db(transaction=True)
def test_two_cpu_workers_started_from_the_procfile_on_one_host_are_two_worker_hosts(tmp_path):
    line = read_procfile(REPO / "Procfile")["worker-cpu"]
    env = {
        **os.environ,
        # As the Makefile does: the venv's celery first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CPU_CONCURRENCY": "1",
    }
    processes = []
    try:
        for index in range(2):
            with (tmp_path / f"worker-{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        ["/bin/sh", "-c", f"exec {line}"],
                        cwd=REPO,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        names = {f"cpu-{process.pid}@" for process in processes}

        def registered():
            rows = WorkerHost.objects.filter(stopped_at__isnull=True).values_list("hostname", flat=True)
            return {name for name in names if any(row.startswith(name) for row in rows)} == names

        _wait_for(registered, 120, "both workers registered", tmp_path / "worker-1.log")
        assert WorkerHost.objects.filter(hostname__startswith="cpu-").count() == 2
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
