"""PostgreSQL killed (-9) and restarted under load: no job stuck, none whose work finished run again.

Only with the embedded PostgreSQL (apps/core/devservices.py), which the test can kill and
start again; skipped when DATABASE_URL points elsewhere.
"""

import contextlib
import signal
import time

import psutil
import pytest
from django.conf import settings
from django.db import connections
from django.db.utils import InterfaceError, OperationalError

from apps.core import devservices
from apps.jobs import services
from apps.jobs.models import Job, JobEvent
from tests.acceptance.test_job_contract import FAST_CONTRACT

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Longer than the outage: a job running through it keeps its lease. The outage is a kill, 2 s, and
# PostgreSQL's crash recovery and restart; beside 4 busy loops and a second test process that took
# long enough for the 2 jobs running at the kill to lose a 20 s lease and run again.
LEASE_S = 45


def embedded_postgres() -> bool:
    port = settings.DATABASES["default"].get("PORT")
    return str(port) == str(devservices.PG_PORT) and devservices.postgres_running()


def kill_postgres() -> None:
    pid = int((devservices._pg_dir() / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    for process in [*postmaster.children(recursive=True), postmaster]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs([postmaster], timeout=10)


def count(**filters) -> int:
    """A count that survives this process's own connection dying with the server."""
    for _ in range(100):
        try:
            return Job.objects.filter(**filters).count()
        except (InterfaceError, OperationalError):
            connections.close_all()
            time.sleep(0.3)
    raise AssertionError("the database did not come back")


def test_postgres_killed_and_restarted_mid_run_loses_and_repeats_nothing(start_worker, member, tmp_path):
    if not embedded_postgres():
        pytest.skip("DATABASE_URL is not the embedded PostgreSQL")
    membership, _ = member("developer")
    env = {**FAST_CONTRACT, "JOBS_LEASE_SECONDS": str(LEASE_S), "JOBS_HEARTBEAT_SECONDS": "1"}
    jobs = [services.job_submit(membership=membership, kind="sleep", params={"duration_s": 0.3})[0] for _ in range(100)]
    ids = [job.pk for job in jobs]
    start_worker("cpu", concurrency=2, env=env)
    # The control host (reaper and ring on beat) must heal by itself after the restart.
    start_worker(
        "control",
        env={**env, "JOBS_RING_INTERVAL_SECONDS": "1", "JOBS_REAPER_INTERVAL_SECONDS": "2"},
        extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
    )
    deadline = time.monotonic() + 60
    while count(pk__in=ids, status="succeeded") < 10:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)

    connections.close_all()
    killed = time.monotonic()
    kill_postgres()
    time.sleep(2)  # jobs finish during the outage; their success writes must wait it out
    devservices.postgres_start()
    restarted = time.monotonic()
    count(pk__in=ids)  # reconnected
    outage_s = time.monotonic() - killed

    deadline = restarted + LEASE_S + 30 + 60
    while count(pk__in=ids, status="succeeded") < 100:
        assert time.monotonic() < deadline, f"{100 - count(pk__in=ids, status='succeeded')} jobs stuck"
        time.sleep(0.5)
    assert time.monotonic() - restarted < LEASE_S + 30 + 60

    for job in Job.objects.filter(pk__in=ids):
        assert JobEvent.objects.filter(job=job, to_status="succeeded").count() == 1
    # Work that finished was recorded, not run again: no job needed a second attempt.
    repeated = Job.objects.filter(pk__in=ids, attempt__gt=1).count()
    assert repeated == 0, f"{repeated} jobs ran again after an outage of {outage_s:.1f} s (lease {LEASE_S} s)"
