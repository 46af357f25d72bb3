"""`manage.py bench prune`: the job path's submit-to-finish latency while a prune of N finished jobs runs, vs without.

N finished jobs (3 events each) past retention are inserted with bulk SQL into an organization
of their own. Then no-op jobs are submitted at a steady rate to a real worker, first with no
prune running (the baseline), then while `jobs_prune` deletes the N jobs in its batches, then
without again; the figure is p99 during the prune over p99 of the baselines, same run.
"""

import statistics
import threading
import time

from django.db import connection, connections

from apps.accounts.models import Organization
from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.bench import _bench_membership, _wait
from apps.jobs.models import UNFINISHED_STATUSES, Job


def add_arguments(parser) -> None:
    parser.add_argument("--old-jobs", type=int, default=100_000, help="finished jobs to prune (default 100000)")
    parser.add_argument("--rate", type=float, default=20.0, help="job-path submits per second (default 20)")
    parser.add_argument("--baseline-s", type=float, default=20.0, help="seconds of each baseline (default 20)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")


def _insert_old_jobs(organization: Organization, n: int) -> None:
    """N succeeded jobs finished 400 days ago, 3 events each: one INSERT ... SELECT per table."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO jobs_job (id, organization_id, kind, status, priority, queue, params, progress,"
            " progress_message, attempt, max_attempts, idempotency_fingerprint, worker_host, task_id,"
            " created_at, queued_at, started_at, finished_at, updated_at)"
            " SELECT gen_random_uuid(), %s, 'sleep', 'succeeded', 5, 'cpu', '{}'::jsonb, 1, '', 1, 3, '',"
            " 'cpu@old', '', t, t, t, t + interval '1 second', t"
            " FROM (SELECT now() - interval '400 days' - g * interval '1 second' AS t"
            " FROM generate_series(1, %s) AS g) s",
            [organization.pk, n],
        )
        cursor.execute(
            "INSERT INTO jobs_jobevent (job_id, created_at, from_status, to_status, attempt, worker, message)"
            " SELECT j.id, j.created_at, e.from_status, e.to_status, 1, '', ''"
            " FROM jobs_job j CROSS JOIN (VALUES ('', 'queued'), ('queued', 'running'), ('running', 'succeeded'))"
            " AS e(from_status, to_status) WHERE j.organization_id = %s",
            [organization.pk],
        )


def _phase(membership, *, rate: float, until) -> list[float]:
    """Submit no-op jobs every 1/rate s until `until()` is true; their submit-to-finish latencies (s)."""
    ids = []
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not until():
        job, _ = services.job_submit(membership=membership, kind="sleep", params={"duration_s": 0})
        ids.append(job.id)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    unfinished = Job.objects.filter(pk__in=ids, status__in=UNFINISHED_STATUSES)
    _wait(lambda: len(ids) - unfinished.count(), len(ids))
    rows = Job.objects.filter(pk__in=ids).values_list("created_at", "finished_at")
    return sorted((finished - created).total_seconds() for created, finished in rows)


def _p(latencies: list[float], q: float) -> float:
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))]


def run(stdout, *, old_jobs: int, rate: float, baseline_s: float, concurrency: int, **_) -> None:
    membership = _bench_membership()
    old, _ = Organization.objects.get_or_create(slug="bench-prune-old", defaults={"name": "Old jobs (bench)"})
    Job.objects.filter(organization=membership.organization).delete()
    worker = WorkerProcess("cpu", name="cpu@bench-prune", concurrency=concurrency, loglevel="WARNING").start()
    try:
        started = time.monotonic()
        _insert_old_jobs(old, old_jobs)
        stdout.write(f"inserted {old_jobs} finished jobs (+{3 * old_jobs} events) in {time.monotonic() - started:.1f}s")
        end = time.monotonic() + 5  # warm-up: worker children, connections
        _phase(membership, rate=rate, until=lambda: time.monotonic() > end)

        end = time.monotonic() + baseline_s
        before = _phase(membership, rate=rate, until=lambda: time.monotonic() > end)

        outcome: dict = {}

        def prune() -> None:
            began = time.monotonic()
            try:
                # Only the bench's organization: a bench must not prune anyone's real history.
                outcome["report"] = services.jobs_prune(organization_id=old.pk)
            finally:
                outcome["seconds"] = time.monotonic() - began
                connections.close_all()

        pruner = threading.Thread(target=prune, name="bench-prune")
        pruner.start()
        during = _phase(membership, rate=rate, until=lambda: not pruner.is_alive())
        pruner.join()

        end = time.monotonic() + baseline_s
        after = _phase(membership, rate=rate, until=lambda: time.monotonic() > end)
    finally:
        worker.stop()
        Job.objects.filter(organization=membership.organization).delete()
        Job.objects.filter(organization=old).delete()
    report = outcome["report"]
    baseline = sorted(before + after)
    ratio = _p(during, 0.99) / _p(baseline, 0.99)
    stdout.write(
        f"prune: {report['jobs']} jobs, {report['job_events']} events in {outcome['seconds']:.1f}s "
        f"({report['jobs'] / outcome['seconds']:.0f} jobs/s)"
    )
    for label, values in (("without prune", baseline), ("during prune", during)):
        stdout.write(
            f"  {label:14} {len(values):5} jobs: p50 {statistics.median(values) * 1000:7.1f} ms"
            f"  p99 {_p(values, 0.99) * 1000:7.1f} ms  max {values[-1] * 1000:7.1f} ms"
        )
    p99_during, p99_without = _p(during, 0.99) * 1000, _p(baseline, 0.99) * 1000
    stdout.write(
        f"p99_ratio={ratio:.2f} p99_ms_during={p99_during:.1f} p99_ms_without={p99_without:.1f}"
        f" pruned_jobs={report['jobs']} prune_s={outcome['seconds']:.1f} rate={rate:g}"
    )
