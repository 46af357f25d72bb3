"""`manage.py bench fairness`: one organization floods a queue; does another still get served, and at which share?

Part 1: A floods the queue with `--flood` short jobs; once workers are busy with it, B submits
`--late` jobs. Prints B's p50/p95 queue wait beside the wait first-in-first-out would have
given it in the same run (A's jobs queued ahead of B's, at A's measured throughput), and A's
throughput meanwhile.

Part 2: A and B both keep the queue full (`--share-jobs` each), with weights 1:1 and then 2:1.
Over the window in which both still had queued work, prints the cost (wall seconds of
attempts) each received and its ratio against the ratio of their weights.
"""

import statistics
import tempfile
import time

from apps.accounts.models import Organization, OrganizationQuota, Role, User
from apps.accounts.services import membership_set
from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.models import ACTIVE_STATUSES, Job, JobStatus, OrganizationUsage


def add_arguments(parser) -> None:
    parser.add_argument("--flood", type=int, default=2000, help="A's jobs submitted first (default 2000)")
    parser.add_argument("--late", type=int, default=20, help="B's jobs submitted once A's run (default 20)")
    parser.add_argument("--share-jobs", type=int, default=600, help="each organization's jobs in part 2 (default 600)")
    parser.add_argument("--duration-s", type=float, default=0.02, help="each job's sleep (default 0.02)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")


def _member(slug: str):
    user, _ = User.objects.get_or_create(username=f"bench-{slug}")
    organization, _ = Organization.objects.get_or_create(slug=f"bench-{slug}", defaults={"name": slug})
    membership = membership_set(user=user, organization=organization, role=Role.SERVICE)
    # Bench floods must fit under the per-organization admission cap and run unlimited.
    OrganizationQuota.objects.update_or_create(organization=organization, defaults={"running_jobs": {}})
    return membership


def _reset(*memberships) -> None:
    organizations = [membership.organization for membership in memberships]
    # Taken out of the queue first (a delete could race a claim writing its event), then
    # deleted once nothing of them runs.
    Job.objects.filter(organization__in=organizations, status=JobStatus.QUEUED).update(status=JobStatus.CANCELLED)
    deadline = time.monotonic() + 120
    while Job.objects.filter(organization__in=organizations, status__in=ACTIVE_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark jobs still running after 120 s")
        time.sleep(0.1)
    Job.objects.filter(organization__in=organizations).delete()
    OrganizationUsage.objects.filter(organization__in=organizations).delete()


def _submit(membership, count: int, duration_s: float) -> list:
    return [
        services.job_submit(membership=membership, kind="sleep", params={"duration_s": duration_s})[0].pk
        for _ in range(count)
    ]


def _wait_until(predicate, what: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark stalled: {what}")
        time.sleep(0.05)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _latecomer(a, b, *, flood: int, late: int, duration_s: float) -> dict:
    flood_ids = _submit(a, flood, duration_s)
    succeeded = Job.objects.filter(status=JobStatus.SUCCEEDED)
    # A's throughput on its own, over a stretch of its flood, sets what FIFO would cost B.
    _wait_until(lambda: succeeded.filter(pk__in=flood_ids).count() >= max(5, flood // 40), "A's flood never ran")
    alone_from, alone_done = time.monotonic(), succeeded.filter(pk__in=flood_ids).count()
    _wait_until(lambda: succeeded.filter(pk__in=flood_ids).count() >= alone_done + max(10, flood // 20), "A stalled")
    a_rate = (succeeded.filter(pk__in=flood_ids).count() - alone_done) / (time.monotonic() - alone_from)
    ahead = Job.objects.filter(pk__in=flood_ids, status=JobStatus.QUEUED).count()
    late_ids = _submit(b, late, duration_s)
    _wait_until(lambda: succeeded.filter(pk__in=late_ids).count() == late, "B's jobs did not finish")
    waits = [
        (job.started_at - job.created_at).total_seconds()
        for job in Job.objects.filter(pk__in=late_ids).only("started_at", "created_at")
    ]
    return {
        "b_wait_p50_s": statistics.median(waits),
        "b_wait_p95_s": _percentile(waits, 0.95),
        # First in, first out: B's jobs would have waited for the A jobs queued ahead of them.
        "b_wait_fifo_s": ahead / a_rate if a_rate else float("inf"),
        "a_jobs_per_s": a_rate,
    }


def _share(a, b, *, jobs: int, duration_s: float, weights: tuple[float, float]) -> dict:
    for membership, weight in zip((a, b), weights, strict=True):
        OrganizationQuota.objects.filter(organization=membership.organization).update(share_weight=weight)
    operator, _ = User.objects.get_or_create(username="bench-operator", defaults={"is_superuser": True})
    a_ids, b_ids = [], []
    # Both backlogs are in place before any claim: the split measured is the scheduler's, not
    # the order of submission (paused meanwhile, then resumed: the resume rings the queue).
    services.queue_set_paused(queue="cpu", paused=True, actor=operator, reason="bench fairness")
    try:
        for _ in range(jobs):  # interleaved, so age favours neither
            a_ids += _submit(a, 1, duration_s)
            b_ids += _submit(b, 1, duration_s)
    finally:
        services.queue_set_paused(queue="cpu", paused=False, actor=operator)
    queued = Job.objects.filter(status=JobStatus.QUEUED)
    _wait_until(
        lambda: not queued.filter(pk__in=a_ids).exists() or not queued.filter(pk__in=b_ids).exists(),
        "neither organization ran out",
    )
    contended = {}
    for name, ids in (("a", a_ids), ("b", b_ids)):
        finished = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).only("started_at", "finished_at")
        contended[name] = sum((job.finished_at - job.started_at).total_seconds() for job in finished)
    ratio = contended["a"] / contended["b"] if contended["b"] else float("inf")
    return {"a_cost_s": contended["a"], "b_cost_s": contended["b"], "ratio": ratio, "weights": weights[0] / weights[1]}


def run(stdout, *, flood: int, late: int, share_jobs: int, duration_s: float, concurrency: int, **_) -> None:
    a, b = _member("fair-a"), _member("fair-b")
    _reset(a, b)
    schedule = tempfile.TemporaryDirectory()
    # With control and beat, as deployed: the ring keeps a doorbell per eligible job (a
    # resume rings at most JOBS_RING_MAX_PER_QUEUE at once; the next rings cover the rest).
    worker = WorkerProcess(
        "cpu,control",
        name="cpu@bench-fairness",
        concurrency=concurrency,
        loglevel="WARNING",
        extra_args=["--beat", f"--schedule={schedule.name}/beat-schedule"],
    ).start()
    try:
        latecomer = _latecomer(a, b, flood=flood, late=late, duration_s=duration_s)
        stdout.write(
            f"part 1: A floods {flood} jobs of {duration_s}s, then B submits {late}: "
            f"B waits p50 {latecomer['b_wait_p50_s']:.2f}s, p95 {latecomer['b_wait_p95_s']:.2f}s "
            f"(first-in-first-out: {latecomer['b_wait_fifo_s']:.1f}s); "
            f"A alone ran {latecomer['a_jobs_per_s']:.0f} jobs/s"
        )
        shares = {}
        for weights in ((1.0, 1.0), (2.0, 1.0)):
            _reset(a, b)
            shares[weights] = result = _share(a, b, jobs=share_jobs, duration_s=duration_s, weights=weights)
            stdout.write(
                f"part 2, weights {weights[0]:g}:{weights[1]:g}: A got {result['a_cost_s']:.1f}s, "
                f"B {result['b_cost_s']:.1f}s of work while both waited: ratio {result['ratio']:.2f} "
                f"(weights {result['weights']:.2f})"
            )
    finally:
        _reset(a, b)
        worker.stop()
        schedule.cleanup()
    even, double = shares[(1.0, 1.0)], shares[(2.0, 1.0)]
    stdout.write(
        f"b_wait_p50_s={latecomer['b_wait_p50_s']:.2f} b_wait_p95_s={latecomer['b_wait_p95_s']:.2f}"
        f" b_wait_fifo_s={latecomer['b_wait_fifo_s']:.1f} a_jobs_per_s={latecomer['a_jobs_per_s']:.0f}"
        f" share_ratio_1_1={even['ratio']:.2f} share_ratio_2_1={double['ratio']:.2f}"
    )
