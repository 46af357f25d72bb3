"""apps.jobs.task_events: which Celery task events a job attempt becomes (the broker replaced by a recorder)."""

import uuid

import pytest

from apps.jobs import task_events
from apps.jobs.models import Job


class Recorder:
    def __init__(self, fail: bool = False):
        self.sent, self.fail = [], fail

    def send(self, event_type, **fields):
        if self.fail:
            raise ConnectionError("broker away")
        self.sent.append((event_type, fields))


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(task_events, "_dispatcher", lambda hostname: recorder)
    return recorder


def attempt(kind: str = "inference", attempt: int = 2) -> task_events.AttemptEvents:
    job = Job(id=uuid.uuid4(), kind=kind, attempt=attempt, max_attempts=3, queue="gpu", priority=5, organization_id=7)
    return task_events.AttemptEvents(job, worker="gpu@host", doorbell_id="doorbell-1")


def test_a_claimed_attempt_is_received_and_started_as_a_task_named_after_its_kind(recorder):
    events = attempt()
    events.started()
    (received, fields), (started, started_fields) = recorder.sent
    assert (received, started) == ("task-received", "task-started")
    assert fields["uuid"] == started_fields["uuid"] == f"{events.job.id}:2"
    assert fields["name"] == "jobs.inference" and str(events.job.id) in fields["args"]
    assert "'doorbell': 'doorbell-1'" in fields["kwargs"] and fields["retries"] == 1


@pytest.mark.parametrize(
    ("outcome", "event_type"),
    [
        ("succeeded", "task-succeeded"),
        ("awaiting_children", "task-succeeded"),
        ("failed", "task-failed"),
        ("lease_lost", "task-failed"),
        ("fenced", "task-failed"),
        ("queued", "task-retried"),
        ("snoozed", "task-retried"),
        ("cancelled", "task-revoked"),
    ],
)
def test_each_outcome_ends_the_attempts_task_in_the_matching_state(recorder, outcome, event_type):
    attempt().ended(outcome)
    assert [sent[0] for sent in recorder.sent] == [event_type]


def test_an_event_the_broker_refuses_is_dropped_and_never_fails_the_job(monkeypatch):
    monkeypatch.setattr(task_events, "_dispatcher", lambda hostname: Recorder(fail=True))
    events = attempt()
    events.started()
    events.ended("succeeded")  # no exception: events are advice
