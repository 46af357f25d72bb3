"""`manage.py bench inference`: rows/s through the job path against a bare `session.run` loop, same model and batch.

The job path is everything a client gets: submit (params checked against the signature,
the uploaded inputs' headers read) -> publish -> a real cpu worker process claims the job
-> the executor maps the uploaded .npz, runs it in batches and writes the outputs as an
.npz artifact with its sha256 -> fenced finish. It is timed from just before the submit
to the job's `finished_at` (set by PostgreSQL in the finishing statement), so polling
for the outcome adds nothing to the figure. The bare loop is `session.run` over the same
rows in memory, on a session with the same options, in this process. Each round runs
one of each back to back; the ratio is the median of the rounds' ratios, which a shared
host's changing load disturbs far less than a ratio of best (or median) rates.
"""

import hashlib
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from django.utils import timezone

from apps.core.artifact_storage import delete_stored
from apps.core.worker_process import WorkerProcess
from apps.jobs import services as job_services
from apps.jobs.bench import _bench_membership
from apps.jobs.models import Artifact, Job, JobStatus
from apps.registry.services import model_version_upload
from workers.inference import choose_providers, default_session_cache, session_signature
from workers.inference_bench import _random_inputs
from workers.testing_models import build_test_model

MODELS = ("mlp", "multi_io", "attention")


def add_arguments(parser) -> None:
    parser.add_argument("--batch-sizes", default="1,32,256", help="comma-separated batch sizes (default 1,32,256)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="rows per job are chosen so the bare loop takes about this long (default 2.0): long enough that "
        "the fixed cost of a job (submit, dispatch, claim, finish) is amortised, as it is for a real large batch",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds per batch size (default 5); each runs the bare loop and a job back to back, and the ratio "
        "printed is the median of the rounds' ratios",
    )
    parser.add_argument(
        "--model", choices=MODELS, default="mlp", help="test model (default mlp: 384->1536->384->1536->384 fp32)"
    )


def run(stdout, **options) -> None:
    # One INFO line per submit and upload would bury the figures.
    quiet = logging.getLogger("apps")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        _run(stdout, **options)
    finally:
        quiet.setLevel(level)


def _run(stdout, *, batch_sizes: str, seconds: float, rounds: int, model: str, **_) -> None:
    sizes = [int(size) for size in batch_sizes.split(",") if size.strip()]
    membership = _bench_membership()
    uploads: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        workdir = Path(tmp)
        model_path = build_test_model(model, workdir / f"{model}.onnx")
        version, _ = model_version_upload(
            membership=membership, name=f"bench-{model}", source=model_path, device_preference="cpu"
        )
        reference = f"{version.model.name}@{version.number}"
        # The bare loop's session: same cache class, options and thread setting as the worker's.
        session = default_session_cache().get_session(model_path, version.sha256, choose_providers("cpu"))
        input_specs, _ = session_signature(session)
        rng = np.random.default_rng(0)
        worker = WorkerProcess("cpu", name="cpu@bench-inference", concurrency=1, loglevel="WARNING").start()
        try:
            overhead_s = _fixed_overhead(membership, reference, input_specs, rng, workdir, uploads)
            stdout.write(
                f"model {model} ({version.size_bytes / 1e6:.1f} MB, {session.get_providers()[0]}), worker: prefork, "
                f"1 process; fixed cost of a 1-row job (submit to finished): {overhead_s * 1000:.0f} ms; "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
            )
            ratios = {}
            for batch_size in sizes:
                rate = _calibrate(session, input_specs, batch_size, rng)
                rows = max(batch_size, math.ceil(rate * seconds / batch_size) * batch_size)
                inputs = _random_inputs(input_specs, rows, rng)
                artifact = _upload(membership, inputs, workdir / f"b{batch_size}.npz", uploads)
                params = {"model": reference, "inputs_artifact": str(artifact.id), "batch_size": batch_size}
                # Warm-up job: the worker's session cache and onnxruntime's arena for this batch size.
                _job_seconds(membership, {**params, "inputs_artifact": _small_upload(
                    membership, input_specs, batch_size * 4, rng, workdir, uploads
                )})  # fmt: skip
                bare_runs, job_runs, job_results, bare_cpu = [], [], [], []
                for round_number in range(rounds):
                    # Back to back, in alternating order: both sides of a round see the same
                    # load from the rest of the host, and neither always goes first.
                    if round_number % 2:
                        job_runs.append(_job_seconds(membership, params, job_results))
                        bare_runs.append(_bare_seconds(session, inputs, batch_size, rows, bare_cpu))
                    else:
                        bare_runs.append(_bare_seconds(session, inputs, batch_size, rows, bare_cpu))
                        job_runs.append(_job_seconds(membership, params, job_results))
                round_ratios = [bare / job for bare, job in zip(bare_runs, job_runs, strict=True)]
                ratios[batch_size] = statistics.median(round_ratios)
                best = job_results[job_runs.index(min(job_runs))]
                stdout.write(
                    f"batch {batch_size:>4}: {rows:>7} rows/job ({artifact.size_bytes / 1e6:.0f} MB in); ratio "
                    f"{ratios[batch_size]:.3f} (median of {rounds} rounds, {min(round_ratios):.3f}-"
                    f"{max(round_ratios):.3f}); best runs: bare {rows / min(bare_runs):.0f} rows/s, job path "
                    f"{rows / min(job_runs):.0f} rows/s; fixed cost is {100 * overhead_s / min(job_runs):.1f}% of a job"
                )
                stdout.write(
                    f"            best job: {min(job_runs):.3f} s = batch loop {best['seconds']:.3f} s + output "
                    f"write after the loop {best['write_seconds']:.3f} s + the rest "
                    f"{min(job_runs) - best['seconds'] - best['write_seconds']:.3f} s; best bare loop "
                    f"{min(bare_runs):.3f} s"
                )
                # CPU seconds (all threads) of the bare loop in this process and of the job's batch
                # loop plus output write in the worker: the executor's own cost, which other
                # processes' load moves far less than it moves wall time.
                job_cpu = statistics.median(result["cpu_seconds"] for result in job_results)
                stdout.write(
                    f"            CPU time (median of rounds): bare loop {statistics.median(bare_cpu):.3f} s, job "
                    f"loop + write {job_cpu:.3f} s; ratio {statistics.median(bare_cpu) / job_cpu:.3f}"
                )
        finally:
            worker.stop()
            _clean_up(membership, uploads)
    stdout.write(f"load average at the end: {os.getloadavg()[0]:.1f} (shared host: compare ratios, not rates)")
    stdout.write(" ".join(f"ratio_b{size}={ratios[size]:.2f}" for size in sorted(ratios, reverse=True)))


def _bare_seconds(session, inputs: dict[str, np.ndarray], batch_size: int, rows: int, cpu: list | None = None) -> float:
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, rows, batch_size):
        session.run(None, {name: array[start : start + batch_size] for name, array in inputs.items()})
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started


def _calibrate(session, input_specs, batch_size: int, rng) -> float:
    """Bare rows/s for this batch size: the best of three ~0.3 s runs (which also warm the session up)."""
    rows = batch_size * 8
    inputs = _random_inputs(input_specs, rows, rng)
    _bare_seconds(session, inputs, batch_size, rows)
    while (elapsed := _bare_seconds(session, inputs, batch_size, rows)) < 0.3:
        rows *= 4
        inputs = _random_inputs(input_specs, rows, rng)
    return rows / min([elapsed] + [_bare_seconds(session, inputs, batch_size, rows) for _ in range(2)])


def _job_seconds(membership, params: dict, results: list | None = None) -> float:
    """Submit to finished: from just before the submit to the job's `finished_at`, both on this host's clock."""
    submitted_at = timezone.now()
    job, _ = job_services.job_submit(membership=membership, kind="inference", params=params)
    deadline = time.monotonic() + 600
    while True:
        job.refresh_from_db(fields=["status", "finished_at", "error", "result"])
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark job {job.id} still {job.status} after 600 s")
        # The figure comes from finished_at, so polling rarely costs no precision, and
        # leaves the two cores to the job.
        time.sleep(0.25)
    if job.status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark job {job.id} {job.status}: {job.error}")
    if results is not None:
        results.append(job.result)
    # Removed at once: hundreds of MB of outputs per job would otherwise be written back
    # to disk by the kernel while the next rounds run.
    delete_stored([artifact.file.name for artifact in Artifact.objects.filter(job=job)])
    return (job.finished_at - submitted_at).total_seconds()


def _upload(membership, inputs: dict[str, np.ndarray], path: Path, uploads: list) -> Artifact:
    np.savez(path, **inputs)
    artifact, _ = job_services.artifact_upload(membership=membership, source=path, name=path.name)
    uploads.append(artifact)
    path.unlink()
    return artifact


def _small_upload(membership, input_specs, rows: int, rng, workdir: Path, uploads: list) -> str:
    inputs = _random_inputs(input_specs, rows, rng)
    digest = hashlib.sha256(b"".join(array.tobytes() for array in inputs.values())).hexdigest()[:12]
    return str(_upload(membership, inputs, workdir / f"small-{digest}.npz", uploads).id)


def _fixed_overhead(membership, reference: str, input_specs, rng, workdir: Path, uploads: list) -> float:
    artifact_id = _small_upload(membership, input_specs, 1, rng, workdir, uploads)
    params = {"model": reference, "inputs_artifact": artifact_id, "batch_size": 1}
    _job_seconds(membership, params)  # the worker loads the session here
    return statistics.median(_job_seconds(membership, params) for _ in range(5))


def _clean_up(membership, uploads: list[Artifact]) -> None:
    jobs = Job.objects.filter(organization=membership.organization, kind="inference")
    outputs = Artifact.objects.filter(job__in=jobs)
    delete_stored([artifact.file.name for artifact in [*outputs, *uploads]])
    jobs.delete()
    Artifact.objects.filter(pk__in=[artifact.pk for artifact in uploads]).delete()
