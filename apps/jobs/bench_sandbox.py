"""`manage.py bench sandbox`: isolation overhead against a bare interpreter start, and runs/s through the job path."""

import json
import os
import statistics
import subprocess
import sys
import time

from django.conf import settings

from apps.accounts.models import Role
from apps.accounts.services import organization_quota_set
from apps.core.worker_process import WorkerProcess
from apps.jobs import services
from apps.jobs.bench import _bench_membership, _wait
from apps.jobs.models import TERMINAL_STATUSES, Job, JobStatus
from workers.sandbox import cgroups


def add_arguments(parser) -> None:
    parser.add_argument("--starts", type=int, default=30, help="interpreter starts per side for the overhead (30)")
    parser.add_argument("--runs", type=int, default=60, help="sandbox jobs through the full job path (60)")
    parser.add_argument("--concurrency", type=int, default=2, help="sandbox worker processes (2)")
    parser.add_argument("--cases", type=int, default=20, help="test cases in the judge batch, and separate runs (20)")
    parser.add_argument("--rounds", type=int, default=3, help="judge batch against separate runs, rounds (3)")


def _overhead_on_a_sandbox_host(starts: int, *, tree_memory_limit: bool = True) -> dict:
    """Measured in a process like a sandbox host's: the broker-only worker loads no Django.

    This manage.py process has Django, numpy and onnxruntime loaded and its own threads; a
    sandbox host's worker has none of them, and the figure is what a sandbox host pays.
    """
    # The measuring process claims a free slot of the host like any worker (workers/sandbox/slots.py).
    command = [sys.executable, "-m", "workers.sandbox.bench", "--n", str(starts)]
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        cgroups.SETTING: "1" if tree_memory_limit else "0",
    }
    finished = subprocess.run(
        command, cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"overhead measurement failed: {finished.stderr.strip()[-2000:]}")
    return json.loads(finished.stdout)


JUDGE_PROGRAM = "print(int(input()) * 2)"
# 21 x the default 30 s would pass the 600 s a submission may take in all.
JUDGE_LIMITS = {"wall_seconds": 10}


def _until_finished(ids: list) -> float:
    started = time.perf_counter()
    _wait(lambda: Job.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count(), len(ids))
    return time.perf_counter() - started


def _failures(ids: list) -> list[str]:
    # Each run that did not succeed, with its verdict and reason: "59 of 60" alone said nothing.
    return [
        f"{job.id}: {job.status} {(job.result or {}).get('verdict', '-')}: {(job.error or {}).get('message', '')}"
        for job in Job.objects.filter(pk__in=ids).exclude(status=JobStatus.SUCCEEDED)
    ]


def _judge_against_separate_runs(membership, cases: int) -> tuple[float, float]:
    """Seconds for one judge submission of `cases` cases, and for `cases` separate sandbox jobs, submit to finish.

    Both start at submission, with the same workers, and every run must succeed (a failure is
    reported with its verdict and reason).
    """
    started = time.perf_counter()
    ids = [
        services.job_submit(
            membership=membership,
            kind="sandbox",
            params={"source": JUDGE_PROGRAM, "stdin": str(n), "limits": JUDGE_LIMITS},
        )[0].id
        for n in range(cases)
    ]
    _until_finished(ids)
    separate = time.perf_counter() - started
    failures = _failures(ids)
    started = time.perf_counter()
    test_cases = [{"stdin": str(n), "expected_output": str(2 * n)} for n in range(cases)]
    judged = services.job_submit(
        membership=membership,
        kind="sandbox",
        params={"source": JUDGE_PROGRAM, "test_cases": test_cases, "limits": JUDGE_LIMITS},
    )[0]
    _until_finished([judged.id])
    batch = time.perf_counter() - started
    failures += _failures([judged.id])
    if failures:
        raise RuntimeError("judge figure: runs did not succeed:\n" + "\n".join(failures))
    return batch, separate


def run(stdout, *, starts: int, runs: int, concurrency: int, cases: int = 20, rounds: int = 3, **_) -> None:
    per_process = _overhead_on_a_sandbox_host(starts, tree_memory_limit=False)
    overhead = _overhead_on_a_sandbox_host(starts)
    tree_limit, why = cgroups.available()
    stdout.write(
        f"isolation, per-process limits only: sandboxed print(1) {per_process['sandbox_median_ms']:.1f} ms "
        f"vs bare start {per_process['bare_median_ms']:.1f} ms, ratio {per_process['ratio']:.2f}"
    )
    stdout.write(
        f"isolation, default (tree memory limit {'on' if tree_limit else 'unavailable: ' + why}): sandboxed print(1) "
        f"{overhead['sandbox_median_ms']:.1f} ms vs bare start {overhead['bare_median_ms']:.1f} ms, "
        f"ratio {overhead['ratio']:.2f} (medians of {starts}, {overhead['interpreter']})"
    )
    membership = _bench_membership(Role.OPERATOR)
    # The benchmark submits all its runs at once; the default quota allows fewer active ones.
    organization_quota_set(organization=membership.organization, actor=None, concurrent_jobs={"sandbox": max(runs, 1)})
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
        _wait(lambda: Job.objects.filter(pk__in=ids, status__in=TERMINAL_STATUSES).count(), runs)
        elapsed = time.perf_counter() - started
        ok = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count()
        failures = _failures(ids)
        judge_rounds: dict[int, list[tuple[float, float]]] = {}
        if ok == runs:
            judge_rounds[concurrency] = [_judge_against_separate_runs(membership, cases) for _ in range(rounds)]
            if concurrency != 1:
                # A submission runs its cases one after another in one sandbox process; with one
                # process on each side the figure compares the same capacity.
                sandbox.stop()
                sandbox = WorkerProcess(
                    "sandbox",
                    name="sandbox-one@bench",
                    app="workers.sandbox.app",
                    broker_only=True,
                    concurrency=1,
                    loglevel="WARNING",
                ).start()
                judge_rounds[1] = [_judge_against_separate_runs(membership, cases) for _ in range(rounds)]
    finally:
        sandbox.stop()
        control.stop()
        Job.objects.filter(organization=membership.organization).delete()
    if ok != runs:
        raise RuntimeError(f"only {ok} of {runs} sandbox runs succeeded:\n" + "\n".join(failures))
    stdout.write(f"job path: {runs} sandbox jobs in {elapsed:.2f} s with {concurrency} sandbox processes")
    judge_ratios = {}
    for processes, measured in sorted(judge_rounds.items()):
        batch = statistics.median(b for b, _ in measured)
        separate = statistics.median(s for _, s in measured)
        judge_ratios[processes] = batch / separate
        stdout.write(
            f"judge, {processes} sandbox process(es): one submission of {cases} test cases {batch:.2f} s vs {cases} "
            f"separate sandbox jobs {separate:.2f} s, ratio {judge_ratios[processes]:.2f} (medians of {rounds}: "
            + ", ".join(f"{b:.2f}/{s:.2f}" for b, s in measured)
            + ")"
        )
    stdout.write(
        f"overhead_ratio={overhead['ratio']:.2f} overhead_ms={overhead['overhead_ms']:.1f} "
        f"overhead_ratio_per_process_limits={per_process['ratio']:.2f} runs_per_s={runs / elapsed:.1f} "
        + "".join(f"judge_ratio_{p}proc={ratio:.2f} " for p, ratio in sorted(judge_ratios.items()))
        + f"load={' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
