"""gpu or cpu: decided by one rule (apps.jobs.routing) at submit, and again for jobs left waiting on gpu."""

import pytest

from apps.jobs import services
from apps.jobs.models import Job, JobEvent
from tests.integration.test_inference_batching import upload_and_promote
from workers.testing_models import MLP_WIDTHS, build_test_model

pytestmark = pytest.mark.django_db(transaction=True)

CUDA = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def submit_inference(client, model: str) -> Job:
    inputs = {"x": [[0.5] * MLP_WIDTHS[0]] * 2}
    response = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": model, "inputs": inputs}}, format="json"
    )
    assert response.status_code == 201, response.json()
    return Job.objects.get(pk=response.json()["id"])


def test_a_job_waiting_on_gpu_moves_to_cpu_once_no_gpu_host_is_left(member, tmp_path):
    _, client = member("owner")
    upload_and_promote(client, build_test_model("mlp", tmp_path / "mlp.onnx"), "scorer")
    services.worker_host_register(hostname="gpu@box", queues=["gpu"], capabilities=CUDA, version="t", pid=1)
    job = submit_inference(client, "scorer")
    assert job.queue == "gpu"

    services.jobs_reap()
    assert Job.objects.get(pk=job.pk).queue == "gpu"  # the gpu host is alive: the job keeps its place

    services.worker_host_stopped(hostname="gpu@box")
    assert services.jobs_reap()["moved_to_cpu"] == 1
    moved = Job.objects.get(pk=job.pk)
    assert moved.queue == "cpu" and moved.status == "queued"
    event = JobEvent.objects.filter(job=job).latest("created_at")
    assert event.message == "moved from gpu to cpu: no live gpu host is left"
    assert services.job_claim_next(queue="cpu", worker="cpu@test").pk == job.pk


def test_a_gpu_host_without_a_cuda_provider_gets_no_gpu_jobs(member, tmp_path):
    _, client = member("owner")
    upload_and_promote(client, build_test_model("mlp", tmp_path / "mlp.onnx"), "scorer")
    services.worker_host_register(
        hostname="gpu@nocuda", queues=["gpu"], capabilities={"providers": ["CPUExecutionProvider"]}, version="t", pid=1
    )
    assert submit_inference(client, "scorer").queue == "cpu"
