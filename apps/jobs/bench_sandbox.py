"""`manage.py bench sandbox`: isolation overhead against a bare interpreter start, and runs/s through the job path."""

import time

from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.bench import TERMINAL, _bench_membership, _wait
from apps.jobs.models import Job, JobStatus
from workers.sandbox.bench import measure_overhead

# A slot the running workers never use (pool children take slots 0..concurrency-1).
BENCH_SLOT = 250


def add_arguments(parser) -> None:
    parser.add_argument("--starts", type=int, default=30, help="interpreter starts per side for the overhead (30)")
    parser.add_argument("--runs", type=int, default=60, help="sandbox jobs through the full job path (60)")
    parser.add_argument("--concurrency", type=int, default=2, help="sandbox worker processes (2)")


def run(stdout, *, starts: int, runs: int, concurrency: int, **_) -> None:
    overhead = measure_overhead(n=starts, slot=BENCH_SLOT)
    stdout.write(
        f"isolation: sandboxed print(1) {overhead['sandbox_median_ms']:.1f} ms vs bare start "
        f"{overhead['bare_median_ms']:.1f} ms (median of {starts}, {overhead['interpreter']})"
    )
    membership = _bench_membership()
    control = WorkerProcess("control", name="control@bench", loglevel="WARNING").start()
    sandbox = WorkerProcess(
        "sandbox",
        name="sandbox@bench",
        app="workers.sandbox.app",
        broker_only=True,
        concurrency=concurrency,
        loglevel="WARNING",
    ).start()
    try:
        started = time.perf_counter()
        ids = [
            services.job_submit(membership=membership, kind="sandbox", params={"source": "print(1)"})[0].id
            for _ in range(runs)
        ]
        _wait(lambda: Job.objects.filter(pk__in=ids, status__in=TERMINAL).count(), runs)
        elapsed = time.perf_counter() - started
        ok = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count()
    finally:
        sandbox.stop()
        control.stop()
        Job.objects.filter(organization=membership.organization).delete()
    if ok != runs:
        raise RuntimeError(f"only {ok} of {runs} sandbox runs succeeded")
    stdout.write(f"job path: {runs} sandbox jobs in {elapsed:.2f} s with {concurrency} sandbox processes")
    stdout.write(
        f"overhead_ratio={overhead['ratio']:.2f} overhead_ms={overhead['overhead_ms']:.1f} "
        f"runs_per_s={runs / elapsed:.1f}"
    )
