"""`manage.py chaos` against real workers: the drills run, the invariants hold, and unsafe drills need --destructive."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.jobs.models import Job, JobEvent
from tests.acceptance.test_job_contract import FAST_CONTRACT

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_kill_and_two_beats_drills_hold_every_invariant(start_worker, tmp_path, capsys):
    worker = start_worker("cpu", concurrency=2, env=FAST_CONTRACT)
    start_worker(
        "control",
        env={**FAST_CONTRACT, "JOBS_RING_INTERVAL_SECONDS": "1", "JOBS_REAPER_INTERVAL_SECONDS": "1"},
        extra_args=["--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
    )
    call_command("chaos", "--drills", "kill,two-beats", "--jobs", "20", "--duration", "0.5", "--settle-timeout", "90")
    out, err = capsys.readouterr()
    assert "every invariant held" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("kill", "two-beats"))}
    assert rows["kill"][1:6] == ["20", "0", "0", "0", "0"] and rows["two-beats"][1:6] == ["20", "0", "0", "0", "0"]
    assert "killed" in err and "worker pool process(es)" in err and "killed 0 " not in err
    # The killed children's jobs were taken over by a later attempt, each finished once.
    chaos_jobs = Job.objects.filter(organization__slug="chaos")
    assert chaos_jobs.filter(status="succeeded").count() == 40
    assert chaos_jobs.filter(attempt__gt=1).exists()
    assert JobEvent.objects.filter(job__in=chaos_jobs, to_status="succeeded").count() == 40
    assert worker.process.poll() is None  # the main survived: only its pool processes were killed


def test_disruptive_drills_need_destructive_and_names_are_checked():
    with pytest.raises(CommandError, match="add --destructive"):
        call_command("chaos", "--drills", "flush")
    with pytest.raises(CommandError, match="unknown nope"):
        call_command("chaos", "--drills", "kill,nope")
    with pytest.raises(CommandError, match="partition disturb"):
        call_command("chaos", "--drills", "partition")


def test_the_partition_drill_says_why_it_cannot_run_outside_the_multi_host_harness(settings, tmp_path, capsys):
    """Only tests/multihost runs hosts with cables to cut (its test runs the drill for real)."""
    settings.CHAOS_NETNS_TOPOLOGY = ""
    call_command("chaos", "--drills", "partition", "--destructive")
    out, err = capsys.readouterr()
    assert "every invariant held" in out and out.splitlines()[1].split()[:2] == ["partition", "0"]
    assert "partition: skipped: partition cuts a host's network cable" in err
    assert "multi-host test harness (tests/multihost)" in err and "CHAOS_NETNS_TOPOLOGY" in err

    settings.CHAOS_NETNS_TOPOLOGY = str(tmp_path / "gone.json")
    call_command("chaos", "--drills", "partition", "--destructive")
    assert f"CHAOS_NETNS_TOPOLOGY: cannot read {tmp_path / 'gone.json'}" in capsys.readouterr().err
    # Nothing was submitted for a drill that could not run.
    assert not Job.objects.filter(organization__slug="chaos").exists()
