"""Artifact storage on a real S3-compatible server (moto over HTTP): uploads, streamed downloads, the host
cache by sha256, fenced output writes, retention and preflight through the storage API."""

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone

from apps.core import artifact_storage
from apps.jobs import services
from apps.jobs.models import Artifact, Job
from tests.s3 import CREDENTIALS

pytestmark = pytest.mark.django_db(transaction=True)


def npz_bytes(rows: int = 10) -> bytes:
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    np.savez(buffer, x=rng.standard_normal((rows, 4)).astype(np.float32), ids=rng.integers(0, 9, (rows, 3)))
    return buffer.getvalue()


def upload(client, data: bytes, name="inputs.npz"):
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/v1/artifacts/", {"file": handle}, format="multipart")


def files_under(folder) -> list[Path]:
    folder = Path(folder)
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def running_job(membership) -> Job:
    job, _ = services.job_submit(membership=membership, kind="sleep", params={})
    Job.objects.filter(pk=job.pk).update(status="running", attempt=1)
    return Job.objects.get(pk=job.pk)


def test_an_upload_is_stored_in_the_bucket_and_downloads_stream_back(s3_storage, member):
    _, client = member("developer")
    data = npz_bytes()

    response = upload(client, data)

    assert response.status_code == 201, response.json()
    artifact = Artifact.objects.get()
    assert s3_storage.names() == [artifact.file.name] and artifact.file.name.endswith(f"{artifact.sha256}.npz")
    assert files_under(settings.MEDIA_ROOT) == []  # nothing on this host's MEDIA_ROOT
    download = client.get(response.json()["download_url"])
    assert download.status_code == 200 and int(download["Content-Length"]) == len(data)
    assert b"".join(download.streaming_content) == data


def test_a_stored_object_is_read_as_a_stream_not_buffered_whole(s3_storage):
    artifact_storage.store_bytes("loose/a.bin", b"abc" * 1000)
    with artifact_storage.stored_open("loose/a.bin") as stored:
        assert isinstance(stored, artifact_storage.StreamedFile) and stored.size == 3000
        assert stored.read(3) == b"abc"  # the first bytes, without the rest having been fetched first
    with pytest.raises(FileNotFoundError):
        artifact_storage.stored_open("loose/missing.bin")


def test_local_copy_fetches_once_by_sha256_and_reuses_the_copy(s3_storage):
    data = os.urandom(300_000)
    sha256 = hashlib.sha256(data).hexdigest()
    artifact_storage.store_bytes("models/x/1.onnx", data)

    first = artifact_storage.local_copy("models/x/1.onnx", sha256=sha256)

    assert first.read_bytes() == data and first.is_relative_to(settings.ARTIFACT_CACHE_DIR)
    assert first.name == f"{sha256}.onnx"
    # Reused: found in this host's cache even once the stored object is gone.
    s3_storage.client().delete_object(Bucket=s3_storage.bucket, Key=f"{s3_storage.prefix}/models/x/1.onnx")
    assert artifact_storage.local_copy("models/x/1.onnx", sha256=sha256) == first


def test_processes_wanting_the_same_file_at_once_fetch_it_once(s3_storage, caplog):
    data = os.urandom(8 * 2**20)
    sha256 = hashlib.sha256(data).hexdigest()
    artifact_storage.store_bytes("models/x/big.onnx", data)
    together = threading.Barrier(3)

    def fetch():
        together.wait()
        return artifact_storage.local_copy("models/x/big.onnx", sha256=sha256)

    with caplog.at_level("INFO", logger="apps.core.artifact_storage"), ThreadPoolExecutor(3) as pool:
        copies = list(pool.map(lambda _: fetch(), range(3)))

    assert len(set(copies)) == 1 and copies[0].read_bytes() == data
    assert [record.getMessage() for record in caplog.records].count("artifact_storage.fetched") == 1


def test_a_stored_file_whose_bytes_do_not_match_its_digest_is_refused_and_not_cached(s3_storage):
    artifact_storage.store_bytes("models/x/2.onnx", b"tampered bytes")

    with pytest.raises(artifact_storage.StoredFileCorrupt, match="not the recorded"):
        artifact_storage.local_copy("models/x/2.onnx", sha256="0" * 64)

    assert files_under(settings.ARTIFACT_CACHE_DIR / "sha256") == []


def test_the_host_cache_keeps_to_its_bound_least_recently_used_first(s3_storage, settings):
    settings.ARTIFACT_CACHE_MAX_BYTES = 250_000
    paths = []
    for index in range(3):
        data = os.urandom(100_000)
        artifact_storage.store_bytes(f"inputs/{index}.npz", data)
        paths.append(artifact_storage.local_copy(f"inputs/{index}.npz", sha256=hashlib.sha256(data).hexdigest()))
        # Idle long enough to be evicted, older first.
        then = time.time() - artifact_storage.CACHE_MIN_IDLE_SECONDS - 100 + index
        os.utime(paths[-1], (then, then))

    # The third fetch went over the bound: the least recently used copy went.
    assert [path.exists() for path in paths] == [False, True, True]
    artifact_storage.local_copy("inputs/1.npz", sha256=paths[1].name.split(".")[0])  # used again: now the newest
    settings.ARTIFACT_CACHE_MAX_BYTES = 150_000
    assert artifact_storage.cache_evict() == 100_000
    assert [path.exists() for path in paths] == [False, True, False]


def test_an_output_is_stored_under_its_job_and_attempt_and_recorded(s3_storage, member, tmp_path):
    membership, _ = member("developer")
    job = running_job(membership)
    path = tmp_path / "outputs.npz"
    path.write_bytes(b"out" * 100)

    stored = services.job_artifact_add(
        job_id=job.id, attempt=1, path=path, name="outputs.npz", sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )

    assert stored
    assert s3_storage.names() == [f"artifacts/{job.id}/attempt-1/outputs.npz"]
    assert Artifact.objects.get(job=job).file.name == f"artifacts/{job.id}/attempt-1/outputs.npz"


def test_a_fenced_out_attempt_uploads_nothing(s3_storage, member, tmp_path):
    membership, _ = member("developer")
    job = running_job(membership)
    Job.objects.filter(pk=job.pk).update(attempt=2)  # the reaper gave the job to another attempt
    path = tmp_path / "outputs.npz"
    path.write_bytes(b"late")

    assert not services.job_artifact_add(job_id=job.id, attempt=1, path=path, name="outputs.npz", sha256="0" * 64)

    assert s3_storage.names() == [] and not Artifact.objects.filter(job=job).exists()


def test_an_attempt_fenced_out_while_it_uploads_has_its_object_deleted(s3_storage, member, tmp_path):
    from django.core.files.storage import default_storage

    membership, _ = member("developer")
    job = running_job(membership)
    path = tmp_path / "outputs.npz"
    path.write_bytes(os.urandom(50_000))
    uploaded = []

    def another_attempt_takes_the_job(**kwargs):
        # Right when the object has landed in the bucket, before the attempt records it.
        uploaded.append(s3_storage.names())
        Job.objects.filter(pk=job.pk).update(attempt=2)

    events = default_storage.connection.meta.client.meta.events
    events.register("after-call.s3.PutObject", another_attempt_takes_the_job)
    try:
        recorded = services.job_artifact_add(
            job_id=job.id, attempt=1, path=path, name="outputs.npz", sha256=hashlib.sha256(b"").hexdigest()
        )
    finally:
        events.unregister("after-call.s3.PutObject", another_attempt_takes_the_job)

    assert uploaded == [[f"artifacts/{job.id}/attempt-1/outputs.npz"]]  # it was uploaded ...
    assert not recorded and not Artifact.objects.filter(job=job).exists()
    assert s3_storage.names() == []  # ... and deleted, never attached


def test_a_later_attempt_replaces_the_earlier_attempts_output_and_its_object(s3_storage, member, tmp_path):
    membership, _ = member("developer")
    job = running_job(membership)
    path = tmp_path / "outputs.npz"
    path.write_bytes(b"first")
    services.job_artifact_add(job_id=job.id, attempt=1, path=path, name="outputs.npz", sha256="1" * 64)
    Job.objects.filter(pk=job.pk).update(attempt=2)
    path.write_bytes(b"second")

    assert services.job_artifact_add(job_id=job.id, attempt=2, path=path, name="outputs.npz", sha256="2" * 64)

    assert s3_storage.names() == [f"artifacts/{job.id}/attempt-2/outputs.npz"]
    assert Artifact.objects.get(job=job).attempt == 2


def test_prune_deletes_objects_past_retention_and_orphans_through_the_storage(s3_storage, member, settings):
    from apps.jobs.services.retention import jobs_prune

    settings.JOBS_RETENTION_DAYS = 30
    settings.PRUNE_BATCH_PAUSE_SECONDS = 0
    settings.PRUNE_ORPHAN_MIN_AGE_SECONDS = 0  # the bucket's clock says "just written"; age is not tested here
    membership, _ = member("developer")
    old, recent, unfinished = running_job(membership), running_job(membership), running_job(membership)
    for job in (old, recent):
        name = services.job_output_name(job_id=job.id, attempt=1, name="out.bin")
        artifact_storage.store_bytes(name, b"x" * 100)
        Artifact.objects.create(
            organization=membership.organization, job=job, role="output", name="out.bin", file=name,
            size_bytes=100, sha256="0" * 64, attempt=1,
        )  # fmt: skip
    Job.objects.filter(pk=old.pk).update(status="succeeded", finished_at=timezone.now() - timedelta(days=40))
    Job.objects.filter(pk=recent.pk).update(status="succeeded", finished_at=timezone.now())
    orphan = artifact_storage.store_bytes(f"artifacts/{recent.id}/attempt-0/replaced.bin", b"y" * 7)
    in_progress = artifact_storage.store_bytes(f"artifacts/{unfinished.id}/attempt-1/partial.bin", b"z")

    report = jobs_prune()

    assert (report["jobs"], report["artifacts"], report["orphan_files"], report["orphan_bytes"]) == (1, 1, 1, 7)
    assert s3_storage.names() == sorted([f"artifacts/{recent.id}/attempt-1/out.bin", in_progress])
    assert orphan not in s3_storage.names()


def _preflight(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "preflight"],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.local", **CREDENTIALS, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_preflight_round_trips_a_probe_object_through_the_bucket(s3_storage):
    result = _preflight(ARTIFACT_STORAGE_URL=s3_storage.url)

    assert result.returncode == 0, result.stderr
    assert f"ok: artifact storage at s3://{s3_storage.bucket}/media" in result.stdout
    assert s3_storage.names() == []  # the probe is deleted


def test_preflight_says_in_one_line_that_the_artifact_storage_is_unreachable():
    result = _preflight(ARTIFACT_STORAGE_URL="s3://nowhere/media?endpoint_url=http://127.0.0.1:1")

    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: artifact storage at s3://nowhere/media"), result.stderr


def test_a_bad_storage_url_stops_every_command_at_start_naming_the_problem():
    result = _preflight(ARTIFACT_STORAGE_URL="s3://bucket/p?endpont_url=http://x")

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ARTIFACT_STORAGE_URL: ")
    assert "unknown parameter 'endpont_url'" in last


LARGE_FILE_BYTES = 200 * 1024 * 1024
# Growth of peak RSS allowed while 200 MiB go up, come back and go out: multipart parts in flight
# and read buffers, far below the file (a whole-file read anywhere would add 200 MiB).
STREAMING_RSS_MARGIN_MIB = 80


def test_a_200_mib_file_is_stored_fetched_and_downloaded_with_bounded_memory(s3_storage, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tests.storage_memory_probe", str(tmp_path), str(LARGE_FILE_BYTES)],
        cwd=settings.BASE_DIR,
        env={
            **os.environ,
            **CREDENTIALS,
            "DJANGO_SETTINGS_MODULE": "project.settings.test",
            "ARTIFACT_STORAGE_URL": s3_storage.url,
            "ARTIFACT_CACHE_DIR": str(tmp_path / "cache"),
            "MEDIA_ROOT": str(tmp_path / "media"),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])

    print("storage figures:", json.dumps(figures))  # shown with -s: the numbers behind the margin
    assert figures["sent"] == figures["copy_size"] == LARGE_FILE_BYTES
    assert s3_storage.names() == ["big/big.bin", "warm-up/small.bin"]
    growth = figures["after_download_mib"] - figures["baseline_mib"]
    assert growth < STREAMING_RSS_MARGIN_MIB, figures


def test_a_worker_that_cannot_reach_the_storage_sends_the_job_back_to_be_retried(
    s3_storage, member, settings, tmp_path
):
    from apps.jobs.runner import run_job
    from workers.testing_models import build_test_model

    _, client = member("developer")
    with build_test_model("multi_io", tmp_path / "multi_io.onnx").open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart").status_code == 201
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer@1", "inputs": {"x": [[0.0] * 4], "ids": [[1, 2, 3]]}}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    # This "worker" is another host (empty cache) whose storage endpoint does not answer.
    settings.ARTIFACT_CACHE_DIR = tmp_path / "worker-cache"
    unreachable = {
        **s3_storage.storage,
        "OPTIONS": {**s3_storage.storage["OPTIONS"], "endpoint_url": "http://127.0.0.1:1"},
    }
    settings.STORAGES = {**settings.STORAGES, "default": unreachable}

    outcome = run_job(job_id=response.json()["id"], worker="cpu@storage-outage")

    job = Job.objects.get(pk=response.json()["id"])
    assert outcome == "queued" and job.status == "queued", (outcome, job.error)
    assert job.error["code"] == "transient_error" and job.error["details"]["exception"] == "EndpointConnectionError"
