"""`manage.py bench jobs`: no-op jobs through the whole job path against a raw Celery no-op task.

Both run on the same broker, queue and worker process (prefork, acks_late, prefetch 1),
measured from the first publish to the last completion. Rounds alternate baseline and job
path, and the ratio is the median of the rounds' own ratios: on a noisy machine a round
and its baseline, seconds apart, see the same conditions; rounds minutes apart may not.
"""

import statistics
import tempfile
import time
from pathlib import Path

from django.db.models import Max

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import membership_set
from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.models import UNFINISHED_STATUSES, Job, JobStatus
from project import queues


def add_arguments(parser) -> None:
    parser.add_argument("--jobs", type=int, default=1000, help="jobs (and raw tasks) per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, alternating baseline and job path (default 5)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")


def _bench_membership(role: str = Role.SERVICE):
    """A member of the `bench` organization; sandbox runs need a person's role (service accounts may not)."""
    user, _ = User.objects.get_or_create(username=f"bench-{role}")
    organization, _ = Organization.objects.get_or_create(slug="bench", defaults={"name": "Benchmarks"})
    return membership_set(user=user, organization=organization, role=role)


def _wait(done, total: int, timeout: float = 600.0, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while done() < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark stalled at {done()}/{total}")
        time.sleep(poll_s)


def _raw_celery_round(app, n: int, workdir: Path) -> float:
    counter = workdir / f"raw-{time.monotonic_ns()}"
    counter.touch()
    queue = queues.direct_queue(queues.CPU)
    started = time.time()
    # Published like the job path publishes (and like `task.delay()`): a producer from
    # Celery's pool per message.
    for _ in range(n):
        app.send_task("bench.noop", args=[str(counter)], queue=queue)
    _wait(lambda: counter.stat().st_size, n)
    # Both rounds end at their last completion as recorded (the counter's last write, the
    # last finished_at), not when a poll noticed it: polling cadence adds no error to either.
    return n / (counter.stat().st_mtime_ns / 1e9 - started)


def _job_path_round(membership, n: int) -> float:
    started = time.time()
    ids = []
    for _ in range(n):
        job, _ = services.job_submit(membership=membership, kind="sleep", params={"duration_s": 0})
        ids.append(job.id)
    # The organization's unfinished jobs, from a partial index that holds only those: the
    # poll must not take the database's CPU away from the path it measures.
    unfinished = Job.objects.filter(organization=membership.organization, kind="sleep", status__in=UNFINISHED_STATUSES)
    _wait(lambda: n - unfinished.count(), n)
    round_jobs = Job.objects.filter(pk__in=ids)
    failed = round_jobs.exclude(status=JobStatus.SUCCEEDED).count()
    if failed:
        raise RuntimeError(f"{failed} of {n} benchmark jobs did not succeed")
    last_finished = round_jobs.aggregate(last=Max("finished_at"))["last"]
    return n / (last_finished.timestamp() - started)


def run(stdout, *, jobs: int, rounds: int, concurrency: int, **_) -> None:
    from project.celery import app

    membership = _bench_membership()
    Job.objects.filter(organization=membership.organization).delete()  # a run interrupted before its cleanup
    worker = WorkerProcess("cpu", name="cpu@bench", concurrency=concurrency, loglevel="WARNING").start()
    raw_rates, job_rates = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            _raw_celery_round(app, 50, workdir)  # warm-up: worker children, connections
            _job_path_round(membership, 50)
            for round_no in range(1, rounds + 1):
                raw_rates.append(_raw_celery_round(app, jobs, workdir))
                job_rates.append(_job_path_round(membership, jobs))
                stdout.write(
                    f"round {round_no}: raw_celery={raw_rates[-1]:.0f}/s job_path={job_rates[-1]:.0f}/s "
                    f"ratio={job_rates[-1] / raw_rates[-1]:.2f}"
                )
    finally:
        worker.stop()
        Job.objects.filter(organization=membership.organization).delete()
    raw, job_path = statistics.median(raw_rates), statistics.median(job_rates)
    ratios = sorted(job / base for job, base in zip(job_rates, raw_rates, strict=True))
    stdout.write(f"median of {rounds} rounds, {jobs} tasks each, worker concurrency {concurrency}:")
    stdout.write(f"  raw Celery no-op:   {raw:8.0f} tasks/s")
    stdout.write(f"  job path (sleep 0): {job_path:8.0f} jobs/s")
    stdout.write(f"  ratio per round:    {ratios[0]:.2f} (lowest) to {ratios[-1]:.2f} (highest)")
    stdout.write(
        f"ratio={statistics.median(ratios):.2f} job_path_per_s={job_path:.0f} raw_celery_per_s={raw:.0f}"
        f" ratio_min={ratios[0]:.2f}"
    )
