"""`manage.py chaos`: the job contract's fault drills, run by an operator against a running stack.

Each drill submits its own cheap jobs (kind `sleep`) in the `chaos` organization, injects
one fault while they run, waits for them to settle and counts what the contract promises
never happens: a job lost (ended failed), doubled (two successes), stuck (not ended by the
deadline) or run twice (started again after it had succeeded). Faults that touch anything
but this stack's own worker children need `--destructive`.

`partition` cuts the network cable of every cpu host for a while and mends it. Only the
multi-host test harness (tests/multihost) runs hosts with cables to cut: it names its
topology file in CHAOS_NETNS_TOPOLOGY; elsewhere the drill is skipped, saying so.
"""

import contextlib
import functools
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from django.conf import settings
from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import membership_set
from apps.jobs import selectors, services
from apps.jobs.models import Job, JobEvent, JobStatus

DESTRUCTIVE = {"flush", "pg-restart", "kill-mains", "partition"}
DRILLS = ("kill", "kill-mains", "flush", "pg-restart", "two-beats", "partition")


@dataclass
class Outcome:
    drill: str
    jobs: int
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
    ran_twice: int = 0
    settle_s: float | None = None
    note: str = ""
    skipped: str = ""
    broken: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.skipped != "" or not (self.lost or self.doubled or self.stuck or self.ran_twice)


def chaos_membership():
    """The drills' own organization and service account: nobody else's jobs are touched or counted."""
    user, _ = User.objects.get_or_create(username="chaos-drills")
    organization, _ = Organization.objects.get_or_create(slug="chaos", defaults={"name": "Chaos drills"})
    return membership_set(user=user, organization=organization, role=Role.SERVICE)


def run_drill(
    name: str, *, jobs: int, duration_s: float, settle_timeout_s: float, partition_s: float = 10.0, progress=None
) -> Outcome:
    fault = FAULTS[name]
    if name == "partition":
        # Said before any job is submitted: a drill that cannot run here leaves nothing behind.
        try:
            _partition_links()
        except DrillImpossible as exc:
            return Outcome(drill=name, jobs=0, skipped=str(exc))
        fault = functools.partial(fault, seconds=partition_s)
    membership = chaos_membership()
    outcome = Outcome(drill=name, jobs=jobs)
    ids = [
        services.job_submit(membership=membership, kind="sleep", params={"duration_s": duration_s})[0].pk
        for _ in range(jobs)
    ]
    unfinished = {"pk__in": ids, "status__in": [JobStatus.QUEUED, *_active()]}
    # The fault lands while jobs run: one injected after the backlog ended would prove nothing.
    if not _wait(lambda: _count(pk__in=ids, status=JobStatus.RUNNING) > 0 or _count(**unfinished) == 0, 60):
        outcome.stuck = jobs
        outcome.note = "no worker took a job within 60 s: is a cpu worker running for this database and broker?"
        return outcome
    if _count(**unfinished) == 0:
        outcome.skipped = "every job ended before the fault could land: raise --jobs or --duration"
        return outcome
    injected = time.monotonic()
    try:
        with fault() as note:
            outcome.note = note
            settled = _wait(lambda: _count(**unfinished) == 0, settle_timeout_s, progress)
    except DrillImpossible as exc:
        outcome.skipped = str(exc)
        settled = _wait(lambda: _count(**unfinished) == 0, settle_timeout_s, progress)
    outcome.settle_s = round(time.monotonic() - injected, 1) if settled else None
    _count_broken(outcome, ids)
    return outcome


def _active():
    return [JobStatus.RUNNING, JobStatus.CANCELLING]


def _count_broken(outcome: Outcome, ids: list) -> None:
    outcome.stuck = _count(pk__in=ids, status__in=[JobStatus.QUEUED, *_active()])
    outcome.lost = _count(pk__in=ids, status__in=[JobStatus.FAILED, JobStatus.CANCELLED])
    successes = {}
    ran_twice = set()
    for job_id, to_status in (
        JobEvent.objects.filter(job_id__in=ids).order_by("created_at", "id").values_list("job_id", "to_status")
    ):
        if to_status == JobStatus.SUCCEEDED:
            successes[job_id] = successes.get(job_id, 0) + 1
        elif to_status == JobStatus.RUNNING and successes.get(job_id):
            ran_twice.add(job_id)
    outcome.doubled = sum(1 for n in successes.values() if n > 1)
    outcome.ran_twice = len(ran_twice)


# --- faults: context managers that inject on enter and undo what they must on exit -------------


@contextlib.contextmanager
def _kill_children():
    """SIGKILL the pool processes of every cpu worker of this stack on this host (their mains replace them)."""
    killed = _signal_workers(children=True, mains=False)
    yield f"killed {killed} worker pool process(es)"


@contextlib.contextmanager
def _kill_mains():
    """SIGKILL the main process (and pool) of every cpu worker: only a process manager brings them back."""
    killed = _signal_workers(children=True, mains=True)
    yield f"killed {killed} worker process(es), mains included"


@contextlib.contextmanager
def _flush_broker():
    from project.celery import app
    from project.queues import TASK_QUEUES

    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
        note = "FLUSHDB on the broker's Redis database"
    else:
        with app.connection_for_write() as conn:
            for queue in TASK_QUEUES:
                queue(conn.default_channel).purge()
        note = "purged every queue on the broker"
    yield note


@contextlib.contextmanager
def _restart_postgres():
    from apps.core import devservices

    port = settings.DATABASES["default"].get("PORT")
    if str(port) != str(devservices.PG_PORT) or not devservices.postgres_running():
        raise DrillImpossible("pg-restart restarts only the embedded PostgreSQL of `make run`")
    connections.close_all()
    pid = int((devservices._pg_dir() / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    for process in [*postmaster.children(recursive=True), postmaster]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs([postmaster], timeout=10)
    time.sleep(2)
    devservices.postgres_start()
    yield "killed PostgreSQL (-9) and started it again"


@contextlib.contextmanager
def _second_beat():
    """A second beat for the drill's duration: the reaper, ring and schedules must still act once."""
    with tempfile.TemporaryDirectory(prefix="chaos-beat-") as workdir:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "project", "beat", f"--schedule={Path(workdir) / 'schedule'}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield "ran a second beat"
        finally:
            beat.terminate()
            try:
                beat.wait(timeout=15)
            except subprocess.TimeoutExpired:
                beat.kill()


@contextlib.contextmanager
def _partition(seconds: float):
    """Cut every cpu host's cable (its jobs' heartbeats and finish writes stall), mend it after `seconds`."""
    links = _partition_links()
    for namespace, device, _ in links:
        _set_link(namespace, device, "down")
    mend = functools.partial(_mend, links)
    timer = threading.Timer(seconds, mend)
    timer.start()
    try:
        yield f"cut the cable of host(s) {', '.join(sorted({host for *_, host in links}))} for {seconds:g} s"
    finally:
        timer.cancel()
        mend()


def _partition_links() -> list[tuple[str, str, str]]:
    """(namespace, device, host) of every cable to a cpu host, from the harness's topology file."""
    path = settings.CHAOS_NETNS_TOPOLOGY
    if not path:
        raise DrillImpossible(
            "partition cuts a host's network cable, and only the multi-host test harness (tests/multihost) "
            "runs hosts in network namespaces with cables to cut; CHAOS_NETNS_TOPOLOGY, the file it writes, "
            "is not set here"
        )
    try:
        topology = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DrillImpossible(f"CHAOS_NETNS_TOPOLOGY: cannot read {path}: {exc}") from exc
    links = [
        (namespace, device, name)
        for name, host in topology.get("hosts", {}).items()
        if "cpu" in host.get("queues", ())
        for namespace, device in host.get("links", ())
    ]
    if not links:
        raise DrillImpossible(f"CHAOS_NETNS_TOPOLOGY: {path} names no cpu host with a cable")
    return links


def _set_link(namespace: str, device: str, state: str) -> None:
    try:
        result = subprocess.run(
            ["ip", "-n", namespace, "link", "set", device, state], capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        raise DrillImpossible(f"partition needs iproute2's `ip`: {exc}") from exc
    if result.returncode != 0:
        raise DrillImpossible(f"ip -n {namespace} link set {device} {state}: {result.stderr.strip()}")


def _mend(links: list[tuple[str, str, str]]) -> None:
    for namespace, device, _ in links:
        _set_link(namespace, device, "up")


class DrillImpossible(Exception):
    """This drill cannot run against this stack (said why)."""


FAULTS: dict[str, Callable] = {
    "kill": _kill_children,
    "kill-mains": _kill_mains,
    "flush": _flush_broker,
    "pg-restart": _restart_postgres,
    "two-beats": _second_beat,
    "partition": _partition,
}


def _signal_workers(*, children: bool, mains: bool) -> int:
    """SIGKILL this stack's live cpu workers on this host, found in its WorkerHost rows.

    No broker round trip (an inspect waits out its whole timeout): the fault lands while the
    jobs seen running are still running, or the drill would prove nothing.
    """
    killed = 0
    for host in selectors.live_worker_hosts(queue="cpu"):
        if not _is_local_worker(host.hostname, host.pid):
            continue
        main = psutil.Process(host.pid)
        processes = main.children() if children else []
        if mains:
            processes.append(main)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
                killed += 1
    return killed


def _is_local_worker(node: str, pid: int | None) -> bool:
    """Whether `pid` here is the celery worker named `node` (a pid from another host may exist here too)."""
    if pid is None:
        return False
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    names = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("-n", "--hostname")]
    names += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--hostname=")]
    host = socket.gethostname()
    return "worker" in argv and any(
        name.replace("%h", host).replace("%n", host.split(".")[0]) == node for name in names
    )


def _count(**filters) -> int:
    """A count that survives this process's own connection dying with the server (pg-restart)."""
    for _ in range(200):
        try:
            return Job.objects.filter(**filters).count()
        except (InterfaceError, OperationalError):
            connections.close_all()
            time.sleep(0.3)
    raise DrillImpossible("the database did not come back within a minute")


def _wait(predicate, timeout: float, progress=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if progress is not None:
            progress()
        time.sleep(0.5)
    return predicate()
