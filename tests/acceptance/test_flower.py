"""Flower tells the truth: a real Flower process watching a real worker run jobs through doorbells."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from django.conf import settings

from apps.core.worker_process import current_database_url
from apps.jobs import services
from apps.jobs.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

AUTH = ("flower", "test-password")


def wait_for(predicate, timeout: float, message: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def start_flower(broker, tmp_path):
    """Start `celery -A project flower` as the Procfile does, on a free port; returns its base URL."""
    processes = []

    def start() -> str:
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("FLOWER_")}
        env.update(
            DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "project.settings.local"),
            DATABASE_URL=current_database_url(),
            CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
            FLOWER_BASIC_AUTH=":".join(AUTH),
            FLOWER_DB=str(tmp_path / "flower.db"),
        )
        log_path = tmp_path / "flower.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "project", "flower", "--conf=project/flowerconfig.py"),
                    *("--address=127.0.0.1", f"--port={port}"),
                ],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def answers():
            if process.poll() is not None:
                raise AssertionError(f"flower exited:\n{log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 90, "flower did not answer")
        return url

    yield start
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def flower_tasks(url: str, **query) -> dict:
    response = httpx.get(f"{url}/api/tasks", params=query, auth=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_flower_shows_each_job_attempt_as_a_task_named_after_its_kind_and_failures_as_failed(
    start_worker, start_flower, member
):
    flower = start_flower()  # first: Flower keeps only the events it receives
    worker = start_worker("cpu", env={"JOBS_RETRY_BACKOFF_SECONDS": "0.2"})
    membership, _ = member("developer")
    ok, _ = services.job_submit(membership=membership, kind="sleep", params={"duration_s": 0.2, "steps": 2})
    # A transient failure on its only attempt: the job ends failed (attempts exhausted).
    bad, _ = services.job_submit(membership=membership, kind="sleep", params={"fail_first_attempts": 1}, max_attempts=1)
    wait_for(
        lambda: (
            set(Job.objects.filter(pk__in=[ok.pk, bad.pk]).values_list("status", flat=True)) == {"succeeded", "failed"}
        ),
        60,
        f"jobs did not end:\n{worker.log()[-3000:]}",
    )

    ok_task, bad_task = f"{ok.pk}:1", f"{bad.pk}:1"
    tasks = wait_for(
        lambda: (
            (found := flower_tasks(flower, taskname="jobs.sleep"))
            and {ok_task, bad_task} <= set(found)
            and found[bad_task]["state"] == "FAILURE"
            and found[ok_task]["state"] == "SUCCESS"
            and found
        ),
        30,
        "flower never showed both job attempts in their final states",
    )
    assert tasks[ok_task]["name"] == "jobs.sleep" and str(ok.pk) in tasks[ok_task]["args"]
    assert tasks[ok_task]["worker"] == worker.name
    assert tasks[ok_task]["received"] and tasks[ok_task]["started"] and tasks[ok_task]["runtime"] is not None
    assert "attempts_exhausted" in tasks[bad_task]["exception"]
    # Flower's Failed filter (its task list's state filter) finds the failed job, and only it.
    failed = flower_tasks(flower, state="FAILURE")
    assert bad_task in failed and ok_task not in failed
    # The doorbell that ran each job says so in its own result.
    doorbells = flower_tasks(flower, taskname="workers.claim_next")
    results = " ".join(str(task.get("result")) for task in doorbells.values())
    assert str(ok.pk) in results and str(bad.pk) in results


def test_flower_broker_page_lists_every_queue(start_worker, start_flower):
    # Flower inspects the workers once, when it starts: the queues of workers that came up
    # later, or that have none (no gpu host), must still be listed with their lengths.
    from urllib.parse import urlsplit

    from project.flowerconfig import rabbitmq_management_api

    api = rabbitmq_management_api(settings.CELERY_BROKER_URL)
    if api is not None:
        host, port = urlsplit(api).hostname, urlsplit(api).port
        with socket.socket() as probe:
            probe.settimeout(2)
            if probe.connect_ex((host, port)) != 0:
                pytest.skip(
                    f"Flower reads RabbitMQ queue lengths only through the management API ({api}), "
                    "and this broker has no rabbitmq_management plugin listening (docs/operations.md)"
                )
    worker = start_worker("cpu")
    flower = start_flower()
    # As under `make run`: Flower has inspected the one worker that was up when it started.
    wait_for(
        lambda: worker.name in httpx.get(f"{flower}/api/workers", auth=AUTH, timeout=20).json(),
        60,
        "flower never inspected the worker",
        poll=1,
    )
    response = httpx.get(f"{flower}/broker", auth=AUTH, timeout=20)
    assert response.status_code == 200
    page = response.text
    for queue in ("cpu", "gpu", "sandbox", "control"):
        assert f'<tr id="{queue}">' in page, f"{queue} missing from the Broker page"
    lengths = httpx.get(f"{flower}/api/queues/length", auth=AUTH, timeout=20).json()
    assert {q["name"] for q in lengths["active_queues"]} >= {"cpu", "gpu", "sandbox", "control"}


def test_flower_shows_a_sandbox_run_as_a_jobs_sandbox_task_on_the_host_that_ran_it(start_worker, start_flower, member):
    flower = start_flower()
    start_worker("control")
    sandbox = start_worker("sandbox", app="workers.sandbox.app", broker_only=True)
    membership, _ = member("developer")
    ok, _ = services.job_submit(membership=membership, kind="sandbox", params={"source": "print('hi')"})
    bad, _ = services.job_submit(membership=membership, kind="sandbox", params={"source": "raise SystemExit(3)"})
    wait_for(
        lambda: (
            set(Job.objects.filter(pk__in=[ok.pk, bad.pk]).values_list("status", flat=True)) == {"succeeded", "failed"}
        ),
        90,
        f"sandbox jobs did not end:\n{sandbox.log()[-3000:]}",
    )
    tasks = wait_for(
        lambda: (
            (found := flower_tasks(flower, taskname="jobs.sandbox"))
            and found.get(f"{ok.pk}:1", {}).get("state") == "SUCCESS"
            and found.get(f"{bad.pk}:1", {}).get("state") == "FAILURE"
            and found
        ),
        30,
        "flower never showed both sandbox attempts in their final states",
    )
    assert tasks[f"{bad.pk}:1"]["worker"] == sandbox.name
    assert "runtime_error" in tasks[f"{bad.pk}:1"]["exception"]
