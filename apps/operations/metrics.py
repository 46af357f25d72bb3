"""Prometheus metrics for `/metrics`, read from PostgreSQL and the broker at scrape time.

Job metrics live in no process: web is several gunicorn processes and jobs finish in
worker processes on other hosts, so in-process counters would each see a slice and reset
on every restart. The Job and WorkerHost rows see everything (docs/decisions/0006).

One exception: `switchyard_throttle_unavailable_total` counts what only a web process sees
(throttle checks made while the shared Redis did not answer). Under gunicorn with
PROMETHEUS_MULTIPROC_DIR set (the Procfile does) it is summed over the web processes of the
host; without it, it is the count of the process that answered the scrape (docs/decisions/0014).
"""

import os
import time
from collections.abc import Iterator

from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from apps.accounts.throttling import THROTTLE_UNAVAILABLE
from apps.operations import selectors
from project import queues

PREFIX = "switchyard"


def _histogram(name: str, documentation: str, histograms: dict[str, selectors.Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["kind"], unit="seconds")
    for kind, histogram in sorted(histograms.items()):
        buckets = [
            (floatToGoString(bound), n) for bound, n in zip(histogram.buckets, histogram.cumulative, strict=True)
        ]
        buckets.append(("+Inf", histogram.count))
        family.add_metric([kind], buckets, histogram.sum)
    return family


# What the housekeeping tasks did (ControlCount rows, task -> name), as named counters.
CONTROL_COUNTERS = (
    (
        "leases_expired",
        "Running jobs whose lease expired (their worker died), found by the reaper.",
        "reap",
        "leases_expired",
    ),
    ("jobs_requeued", "Jobs the reaper returned to the queue after their lease expired.", "reap", "requeued"),
    ("schedules_fired", "Jobs submitted by schedules.", "dispatch_schedules", "fired"),
    (
        "schedule_firings_refused",
        "Schedule firings refused (a quota, a backlog cap, the role); recorded on the schedule.",
        "dispatch_schedules",
        "refused",
    ),
    (
        "schedule_periods_skipped",
        "Missed periods of `skip` schedules that fired nothing.",
        "dispatch_schedules",
        "skipped",
    ),
    (
        "pruned_bytes",
        "Bytes of artifact files removed by pruning (past retention, and orphans).",
        "prune",
        "bytes_pruned",
    ),
)
PRUNED_TABLES = {
    "jobs_pruned": "jobs_job",
    "job_events_pruned": "jobs_jobevent",
    "artifacts_pruned": "jobs_artifact",
    "audit_events_pruned": "accounts_auditevent",
    "orphan_files_pruned": "orphan_files",
    "worker_hosts_pruned": "jobs_workerhost",
}


def _control_path() -> Iterator[Metric]:
    """Runs, errors and the age of the last success of each housekeeping task, and what they did."""
    runs = CounterMetricFamily(f"{PREFIX}_control_runs", "Runs of each housekeeping task.", labels=["task"])
    errors = CounterMetricFamily(
        f"{PREFIX}_control_run_errors", "Runs of each housekeeping task that raised an error.", labels=["task"]
    )
    age = GaugeMetricFamily(
        f"{PREFIX}_control_last_success_age_seconds",
        "Seconds since each housekeeping task last succeeded: a growing value is a dead reaper, ring or dispatcher.",
        labels=["task"],
    )
    for run, seconds in selectors.control_runs_with_age():
        runs.add_metric([run.task], run.runs)
        errors.add_metric([run.task], run.errors)
        if seconds is not None:
            age.add_metric([run.task], seconds)
    yield runs
    yield errors
    yield age

    totals = {(task, name): value for task, name, value in selectors.control_counts()}
    for metric, documentation, task, name in CONTROL_COUNTERS:
        family = CounterMetricFamily(f"{PREFIX}_{metric}", documentation)
        family.add_metric([], totals.get((task, name), 0))
        yield family
    doorbells = CounterMetricFamily(
        f"{PREFIX}_doorbells_rung", "Doorbells published by the ring (and by the reaper's ring).", labels=["task"]
    )
    for task in ("ring", "reap"):
        doorbells.add_metric([task], totals.get((task, "doorbells"), 0))
    yield doorbells
    pruned = CounterMetricFamily(
        f"{PREFIX}_pruned_rows", "Rows (and orphan files) removed by pruning, by table.", labels=["table"]
    )
    for name, table in PRUNED_TABLES.items():
        pruned.add_metric([table], totals.get(("prune", name), 0))
    yield pruned


class SwitchyardCollector(Collector):
    """Every Switchyard metric, computed from aggregates on each scrape."""

    def describe(self) -> list[Metric]:
        # Nothing to announce at registration: describing would mean querying the database at import.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        counts = selectors.job_counts()

        submitted = CounterMetricFamily(
            f"{PREFIX}_jobs_submitted", "Jobs submitted (rows in the jobs table), by kind.", labels=["kind"]
        )
        per_kind: dict[str, int] = {}
        for kind, _status, n in counts:
            per_kind[kind] = per_kind.get(kind, 0) + n
        for kind, n in sorted(per_kind.items()):
            submitted.add_metric([kind], n)
        yield submitted

        finished = CounterMetricFamily(
            f"{PREFIX}_jobs_finished",
            "Jobs in a final state (succeeded, failed, cancelled), by kind and status.",
            labels=["kind", "status"],
        )
        current = GaugeMetricFamily(
            f"{PREFIX}_jobs", "Jobs now in each state, by kind and status.", labels=["kind", "status"]
        )
        for kind, status, n in sorted(counts):
            current.add_metric([kind, status], n)
            if status in ("succeeded", "failed", "cancelled"):
                finished.add_metric([kind, status], n)
        yield finished
        yield current

        failed = GaugeMetricFamily(
            f"{PREFIX}_jobs_failed",
            "Failed jobs by kind and whose failure it was: system (dead letters: attempts exhausted, crashes, "
            "no sandbox) or user (the job's own input or program).",
            labels=["kind", "failure"],
        )
        for kind, origin, n in sorted(selectors.job_failure_counts()):
            failed.add_metric([kind, origin], n)
        yield failed

        yield _histogram(
            f"{PREFIX}_job_duration",
            "Run time of finished jobs (started to finished), by kind.",
            selectors.job_duration_histograms(),
        )
        yield _histogram(
            f"{PREFIX}_job_queue_wait",
            "Time from queued to claimed by a worker, by kind (latest attempt).",
            selectors.job_queue_wait_histograms(),
        )

        depths = selectors.broker_queue_depths()
        broker_up = GaugeMetricFamily(f"{PREFIX}_broker_up", "1 if the broker answered this scrape, else 0.")
        broker_up.add_metric([], 0 if depths is None else 1)
        yield broker_up
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Messages ready in each broker queue (not those held by workers).",
            labels=["queue"],
        )
        for name in queues.QUEUE_NAMES:
            if depths is not None:
                depth.add_metric([name], depths.get(name, 0))
        yield depth

        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_job_age_seconds",
            "How long the longest-waiting queued job of each queue has waited (0 when none waits).",
            labels=["queue"],
        )
        for name, age in sorted(selectors.oldest_queued_age_by_queue().items()):
            oldest.add_metric([name], age)
        yield oldest

        hosts = GaugeMetricFamily(
            f"{PREFIX}_worker_hosts_alive",
            "Worker hosts with a recent heartbeat, per queue they consume.",
            labels=["queue"],
        )
        for name, n in sorted(selectors.live_worker_hosts_by_queue().items()):
            hosts.add_metric([name], n)
        yield hosts

        rows = CounterMetricFamily(
            f"{PREFIX}_inference_rows", "Rows run by succeeded inference jobs, by provider.", labels=["provider"]
        )
        seconds = CounterMetricFamily(
            f"{PREFIX}_inference_compute_seconds",
            "Executor time of succeeded inference jobs (the batch loop), by provider.",
            labels=["provider"],
        )
        for provider, n_rows, n_seconds, _jobs in selectors.inference_totals():
            rows.add_metric([provider], n_rows)
            seconds.add_metric([provider], n_seconds)
        yield rows
        yield seconds
        rate = GaugeMetricFamily(
            f"{PREFIX}_inference_rows_per_second",
            "Rows per executor-second of inference jobs that finished in the last 5 minutes.",
        )
        rate.add_metric([], selectors.inference_recent_rows_per_second())
        yield rate

        verdicts = CounterMetricFamily(
            f"{PREFIX}_sandbox_verdicts", "Finished sandbox runs by verdict.", labels=["verdict"]
        )
        for verdict, n in sorted(selectors.sandbox_verdicts()):
            verdicts.add_metric([verdict], n)
        yield verdicts

        yield from _control_path()

        took = GaugeMetricFamily(f"{PREFIX}_metrics_collect_seconds", "Time this scrape spent collecting.")
        took.add_metric([], time.perf_counter() - started)
        yield took


# Our own registry: the default one adds this process's CPU and memory, which differ per
# gunicorn process and would make successive scrapes disagree.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(SwitchyardCollector())
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Every web process writes its in-process counters to a file there; the scrape sums them.
    multiprocess.MultiProcessCollector(REGISTRY)
else:
    REGISTRY.register(THROTTLE_UNAVAILABLE)
