import time
import uuid

import pytest


@pytest.mark.slow
def test_task_published_to_cpu_queue_runs_in_a_real_worker_process(start_worker, tmp_path):
    worker = start_worker("cpu", name="cpu@roundtrip", extra_args=["--include", "tests.support_tasks"])
    from project.celery import app

    evidence = tmp_path / "delivered"
    token = uuid.uuid4().hex
    app.send_task("tests.record_delivery", args=[str(evidence), token], queue="cpu")

    deadline = time.monotonic() + 30
    while not evidence.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert evidence.exists(), worker.log()[-2000:]
    assert evidence.read_text() == f"cpu@roundtrip {token}"


@pytest.mark.slow
def test_workers_answer_ping_under_their_queue_names(start_worker):
    from project.celery import app

    for queue in ("cpu", "gpu", "sandbox"):
        start_worker(queue, name=f"{queue}@pingtest")
    replies = app.control.ping(destination=["cpu@pingtest", "gpu@pingtest", "sandbox@pingtest"], timeout=2.0)
    names = {name for reply in replies for name in reply}
    assert names == {"cpu@pingtest", "gpu@pingtest", "sandbox@pingtest"}


@pytest.mark.slow
def test_worker_only_consumes_its_own_queue(start_worker, tmp_path):
    start_worker("gpu", name="gpu@onlygpu", extra_args=["--include", "tests.support_tasks"])
    from project.celery import app

    evidence = tmp_path / "delivered"
    app.send_task("tests.record_delivery", args=[str(evidence), "x"], queue="cpu")
    time.sleep(2)
    assert not evidence.exists()
