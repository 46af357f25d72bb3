"""`/metrics` scraped after real jobs ran on real worker processes."""

import time

import numpy as np
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from apps.jobs import services
from apps.jobs.models import Job
from tests.acceptance.test_job_contract import wait_for
from workers.testing_models import build_test_model

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAST = {"JOBS_LEASE_SECONDS": "3", "JOBS_HEARTBEAT_SECONDS": "0.5", "JOBS_RETRY_BACKOFF_SECONDS": "0.2"}


def scrape() -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one scrape, as Prometheus would read it."""
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_until_terminal(ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Job.objects.filter(pk__in=ids, status__in=["succeeded", "failed", "cancelled"]).count() == len(ids):
            return
        time.sleep(0.1)
    raise AssertionError("jobs did not finish")


def test_metrics_count_jobs_queue_depth_workers_and_inference_rows_after_real_runs(start_worker, member, tmp_path):
    membership, client = member("operator")
    sleeps = [services.job_submit(membership=membership, kind="sleep", params={"duration_s": 0.3})[0] for _ in range(3)]
    failing, _ = services.job_submit(
        membership=membership, kind="sleep", params={"fail_first_attempts": 1}, max_attempts=1
    )

    before = scrape()
    assert before[("switchyard_queue_depth", (("queue", "cpu"),))] == 4
    assert before[("switchyard_jobs", (("kind", "sleep"), ("status", "queued")))] == 4
    assert before[("switchyard_worker_hosts_alive", (("queue", "cpu"),))] == 0
    assert before[("switchyard_broker_up", ())] == 1
    assert before[("switchyard_queue_oldest_job_age_seconds", (("queue", "cpu"),))] > 0

    worker = start_worker("cpu", env=FAST)
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx")
    with path.open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart").status_code == 201
    rng = np.random.default_rng(3)
    inputs = {
        "x": rng.standard_normal((37, 4)).astype(np.float32).tolist(),
        "ids": rng.integers(-5, 5, size=(37, 3)).tolist(),
    }
    inference = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@1", "inputs": inputs}}, format="json"
    )
    assert inference.status_code == 201, inference.json()
    wait_until_terminal([*(job.pk for job in sleeps), failing.pk, inference.json()["id"]])

    after = scrape()
    sleep = (("kind", "sleep"),)
    assert after[("switchyard_jobs_submitted_total", sleep)] == 4
    assert after[("switchyard_jobs_submitted_total", (("kind", "inference"),))] == 1
    assert after[("switchyard_jobs_finished_total", (*sleep, ("status", "succeeded")))] == 3
    assert after[("switchyard_jobs_finished_total", (*sleep, ("status", "failed")))] == 1
    assert ("switchyard_jobs_finished_total", (*sleep, ("status", "cancelled"))) not in after
    # Every sleep job ran once: four durations, three of them at least 0.3 s.
    assert after[("switchyard_job_duration_seconds_count", sleep)] == 4
    assert after[("switchyard_job_duration_seconds_sum", sleep)] >= 0.9
    assert after[("switchyard_job_duration_seconds_bucket", (*sleep, ("le", "0.1")))] == 1
    assert after[("switchyard_job_duration_seconds_bucket", (*sleep, ("le", "+Inf")))] == 4
    assert after[("switchyard_job_queue_wait_seconds_count", sleep)] == 4
    # Doorbells published at submit while the worker was not up drain as turns that find nothing
    # (decision 0040): the broker's queue empties, a moment after the last job has ended.
    wait_for(lambda: scrape()[("switchyard_queue_depth", (("queue", "cpu"),))] == 0, 30, "doorbells left queued")
    assert after[("switchyard_queue_oldest_job_age_seconds", (("queue", "cpu"),))] == 0
    assert after[("switchyard_worker_hosts_alive", (("queue", "cpu"),))] == 1
    assert after[("switchyard_worker_hosts_alive", (("queue", "gpu"),))] == 0
    cpu = (("provider", "CPUExecutionProvider"),)
    assert after[("switchyard_inference_rows_total", cpu)] == 37
    seconds = Job.objects.get(pk=inference.json()["id"]).result["seconds"]
    assert after[("switchyard_inference_compute_seconds_total", cpu)] == pytest.approx(seconds)
    assert after[("switchyard_inference_rows_per_second", ())] == pytest.approx(37 / seconds)

    worker.stop()
    assert scrape()[("switchyard_worker_hosts_alive", (("queue", "cpu"),))] == 0


def test_metrics_count_sandbox_verdicts(start_worker, member):
    start_worker("control")
    start_worker("sandbox", app="workers.sandbox.app", broker_only=True, concurrency=2)
    _, client = member("developer")
    ids = [
        client.post("/api/v1/jobs/", {"kind": "sandbox", "params": {"source": source}}, format="json").json()["id"]
        for source in ("print('hi')", "print('again')", "raise SystemExit(3)")
    ]
    wait_until_terminal(ids)
    samples = scrape()
    assert samples[("switchyard_sandbox_verdicts_total", (("verdict", "ok"),))] == 2
    assert samples[("switchyard_sandbox_verdicts_total", (("verdict", "runtime_error"),))] == 1
    assert samples[("switchyard_worker_hosts_alive", (("queue", "sandbox"),))] == 1
