"""A real `celery worker` in a subprocess, for tests and benchmarks on this machine."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db import connection


def current_database_url() -> str:
    """The URL of the database this process is connected to (the test database under pytest)."""
    db = connection.settings_dict
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class WorkerProcess:
    """`celery worker` in its own process group; `kill()` is SIGKILL to all of it."""

    def __init__(
        self,
        queues: str,
        *,
        name: str | None = None,
        concurrency: int = 1,
        extra_args=(),
        env=None,
        loglevel: str = "INFO",
        app: str = "project",
        broker_only: bool = False,
    ):
        self.queues = queues
        self.name = name or f"{queues.split(',')[0]}@w-{uuid.uuid4().hex[:8]}"
        self.log_path = Path(settings.BASE_DIR) / ".data" / "worker-logs" / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queues,
            "-n",
            self.name,
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--without-mingle",
            "--without-gossip",
            f"--loglevel={loglevel}",
            *extra_args,
        ]
        self.broker_only = broker_only
        if broker_only:
            # What a sandbox host gets: the broker and nothing else (no database, no secrets), as
            # its least-privileged broker user where there is one (SANDBOX_BROKER_URL).
            self.env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "CELERY_BROKER_URL": settings.SANDBOX_BROKER_URL or settings.CELERY_BROKER_URL,
                **(env or {}),
            }
            self.process: subprocess.Popen | None = None
            return
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "project.settings.local"),
            "DATABASE_URL": current_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, ready=None) -> "WorkerProcess":
        """Start and wait until it answers a ping, or until `ready()` is true (a worker on another broker).

        A broker-only (sandbox) worker answers no ping: it is ready when its WorkerHost row says so,
        which takes a control worker to record its `ready` report.
        """
        from project.celery import app

        if ready is None and self.broker_only:
            ready = self._registered_since(time.time())
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=settings.BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-3000:]}")
            if ready is not None:
                if ready():
                    return self
                time.sleep(0.2)
            elif app.control.ping(destination=[self.name], timeout=0.25):
                return self
        self.stop()
        raise RuntimeError(f"worker {self.name} did not answer ping in {timeout}s:\n{self.log()[-3000:]}")

    def _registered_since(self, started: float):
        from datetime import UTC, datetime

        from apps.jobs.models import WorkerHost

        since = datetime.fromtimestamp(started - 1, tz=UTC)
        return lambda: WorkerHost.objects.filter(
            hostname=self.name, started_at__gte=since, stopped_at__isnull=True
        ).exists()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
