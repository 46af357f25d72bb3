"""Beat's stop signal closes the schedule file mid-tick; the tick's last steps must not crash beat."""

import pytest
from celery.beat import PersistentScheduler

from project.beat_scheduler import Scheduler
from project.celery import app


def _closed_twice_then_used(scheduler_class, tmp_path):
    scheduler = scheduler_class(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lazy=False)
    entry = next(iter(scheduler.schedule.values()))  # the housekeeping entries of CELERY_BEAT_SCHEDULE
    scheduler.close()  # beat's signal handler
    scheduler.reserve(entry)  # the interrupted tick goes on with the schedule
    scheduler.close()  # the main loop's `finally`
    return scheduler, entry.name


def test_celerys_persistent_scheduler_fails_on_a_schedule_read_after_close(tmp_path):
    with pytest.raises(ValueError, match="closed shelf"):
        _closed_twice_then_used(PersistentScheduler, tmp_path)


def test_the_projects_scheduler_closes_once_and_keeps_its_entries_readable(tmp_path):
    scheduler, name = _closed_twice_then_used(Scheduler, tmp_path)
    assert name in scheduler.schedule
    reopened = Scheduler(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lazy=False)
    assert name in reopened.schedule  # what was synced at the first close is on disk
    reopened.close()
    assert app.conf.beat_scheduler == "project.beat_scheduler:Scheduler"


def test_a_stop_requested_mid_tick_ends_beat_when_the_tick_returns(tmp_path):
    scheduler = Scheduler(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lazy=False)
    ticks = []

    def tick_asked_to_stop(*args, **kwargs):
        ticks.append(scheduler.request_stop())  # the signal lands mid-tick
        return 1.0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PersistentScheduler, "tick", tick_asked_to_stop)
        with pytest.raises(SystemExit):
            scheduler.tick()
    assert ticks == [False]  # not at once: the tick finished first
    assert scheduler.request_stop() is True  # between ticks it may end right away
    scheduler.close()


def test_celery_beat_uses_the_projects_stop_handler():
    from project.beat_scheduler import Beat

    assert issubclass(app.Beat, Beat)


def test_routine_sends_are_logged_at_debug_and_the_hourly_prune_at_info(tmp_path, caplog):
    scheduler = Scheduler(app=app, schedule_filename=str(tmp_path / "celerybeat-schedule"), lazy=False)
    sent = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "apply_async", lambda entry, **_: sent.append(entry.name))
        with caplog.at_level("INFO", logger="celery.beat"):
            for name in ("ring-queues", "reap-jobs", "dispatch-schedules", "prune"):
                scheduler.apply_entry(scheduler.schedule[name])
    scheduler.close()
    assert sent == ["ring-queues", "reap-jobs", "dispatch-schedules", "prune"]
    assert [record.getMessage() for record in caplog.records] == ["Scheduler: Sending due task prune (jobs.prune)"]
