"""Idempotency-Key: the same request again returns its job; a different request under the key is refused."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"kind": "sleep", "params": {"duration_s": 0}, "priority": 5}


def submit(client, body, key="order-42"):
    return client.post("/api/v1/jobs/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_the_same_key_and_the_same_body_return_the_same_job(member):
    _, client = member("developer")
    first = submit(client, BODY)
    again = submit(client, {"params": {"duration_s": 0}, "kind": "sleep", "priority": 5})  # same, keys reordered
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "other",
    [
        {"kind": "nope"},
        {"kind": "sleep", "params": {"duration_s": 1}},
        {"kind": "sleep", "params": {"duration_s": 0}, "priority": 9},
        {"kind": "sleep", "params": {"duration_s": 0}, "max_attempts": 1},
        {"kind": "sleep", "params": {"duration_s": 0}, "concurrency_key": "nightly"},
        {"kind": "sleep", "params": {"duration_s": 0}, "run_after": "2099-01-01T00:00:00Z"},
    ],
)
def test_the_same_key_with_a_different_body_is_a_422_naming_the_conflict(member, other):
    _, client = member("developer")
    first = submit(client, BODY)
    response = submit(client, other)
    assert response.status_code == 422, response.json()
    error = response.json()
    assert error["code"] == "idempotency_conflict"
    assert "Idempotency-Key" in error["fields"]
    assert first.json()["id"] in error["detail"]
    assert Job.objects.count() == 1


def test_a_key_expires_after_the_configured_time(member, settings):
    settings.IDEMPOTENCY_KEY_TTL_S = 3600
    _, client = member("developer")
    first = submit(client, BODY)
    Job.objects.filter(pk=first.json()["id"]).update(created_at=timezone.now() - timedelta(seconds=3601))
    later = submit(client, {"kind": "sleep", "params": {"duration_s": 1}})
    assert later.status_code == 201, later.json()
    assert later.json()["id"] != first.json()["id"]
    assert later.json()["idempotency_key"] == "order-42"
    assert Job.objects.get(pk=first.json()["id"]).idempotency_key is None


def test_a_key_within_its_time_is_kept(member, settings):
    settings.IDEMPOTENCY_KEY_TTL_S = 3600
    _, client = member("developer")
    first = submit(client, BODY)
    Job.objects.filter(pk=first.json()["id"]).update(created_at=timezone.now() - timedelta(seconds=3500))
    assert submit(client, BODY).json()["id"] == first.json()["id"]
