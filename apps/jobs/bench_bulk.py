"""`manage.py bench bulk`: one bulk submit of N jobs against N single submits, in the same run.

Both go through the services a request reaches (validation, quotas, backlog caps, insert,
doorbells); rounds alternate, and the ratio is the median of the rounds' own ratios. No
worker runs: this is the submit side only.
"""

import statistics
import time

from apps.jobs import services
from apps.jobs.bench import _bench_membership
from apps.jobs.models import Job
from project import queues


def add_arguments(parser) -> None:
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per round (default 1000, the bulk maximum)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating single and bulk (default 3)")


def _purge(organization) -> None:
    from project.celery import app

    Job.objects.filter(organization=organization).delete()
    with app.connection_for_write() as conn:
        for queue in queues.TASK_QUEUES:
            queue(conn.default_channel).purge()


def run(stdout, *, jobs: int, rounds: int, **_) -> None:
    membership = _bench_membership()
    request = {"kind": "sleep", "params": {"duration_s": 0}}
    singles, bulks = [], []
    try:
        for round_no in range(1, rounds + 1):
            _purge(membership.organization)
            started = time.perf_counter()
            for _ in range(jobs):
                services.job_submit(membership=membership, **request)
            singles.append(time.perf_counter() - started)
            _purge(membership.organization)
            started = time.perf_counter()
            services.jobs_submit_bulk(membership=membership, requests=[dict(request) for _ in range(jobs)])
            bulks.append(time.perf_counter() - started)
            stdout.write(
                f"round {round_no}: {jobs} single submits {singles[-1]:.2f} s, one bulk submit {bulks[-1]:.2f} s, "
                f"{singles[-1] / bulks[-1]:.1f}x"
            )
    finally:
        _purge(membership.organization)
    speedup = statistics.median(single / bulk for single, bulk in zip(singles, bulks, strict=True))
    stdout.write(f"median of {rounds} rounds: bulk is {speedup:.1f}x faster than {jobs} single submits")
    stdout.write(
        f"speedup={speedup:.1f} single_s={statistics.median(singles):.2f} bulk_s={statistics.median(bulks):.2f}"
    )
