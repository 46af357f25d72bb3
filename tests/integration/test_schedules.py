"""Schedules: REST, CLI and audit; the dispatcher's one firing per period, catch-up, quota refusals, DST."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.accounts.services import organization_quota_set
from apps.jobs import services
from apps.jobs.models import Job, Schedule
from apps.jobs.services.schedules import next_period_after, schedule_create, schedules_dispatch

pytestmark = pytest.mark.django_db

SLEEP = {"kind": "sleep", "params": {"duration_s": 0.01}}


def make_schedule(membership, name="nightly", **kwargs) -> Schedule:
    return schedule_create(membership=membership, name=name, **{**SLEEP, "interval_seconds": 60, **kwargs})


def due(schedule: Schedule, seconds_ago: float) -> Schedule:
    """Make the schedule's next period `seconds_ago` in the past (as if time had passed)."""
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=timezone.now() - timedelta(seconds=seconds_ago))
    return Schedule.objects.get(pk=schedule.pk)


# --- REST -------------------------------------------------------------------------------


def test_a_schedule_is_created_listed_changed_and_deleted_over_rest_and_audited(member):
    membership, client = member("developer")
    response = client.post(
        "/api/v1/schedules/",
        {"name": "hourly-report", "kind": "sleep", "params": {}, "cron": "5 * * * *", "timezone": "Europe/Berlin"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert "duration_s" in body["params"]  # the kind's defaults filled in, as a submit stores them
    assert body["interval_seconds"] is None and body["catch_up"] == "fire_once" and body["enabled"] is True
    assert datetime.fromisoformat(body["next_run_at"]).astimezone(ZoneInfo("Europe/Berlin")).minute == 5
    assert body["created_by"] == membership.user.username

    listed = client.get("/api/v1/schedules/").json()
    assert [s["name"] for s in listed["results"]] == ["hourly-report"]

    url = f"/api/v1/schedules/{body['id']}/"
    changed = client.patch(url, {"interval_seconds": 120}, format="json")
    assert changed.status_code == 200, changed.json()
    assert changed.json()["cron"] == "" and changed.json()["interval_seconds"] == 120
    paused = client.patch(url, {"enabled": False}, format="json").json()
    assert paused["enabled"] is False and paused["next_run_at"] is None
    resumed = client.patch(url, {"enabled": True}, format="json").json()
    assert datetime.fromisoformat(resumed["next_run_at"]) > timezone.now()

    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404
    actions = list(
        AuditEvent.objects.filter(target_type="jobs.schedule", target_id=str(body["id"]))
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "schedule.created",
        "schedule.changed",
        "schedule.paused",
        "schedule.resumed",
        "schedule.deleted",
    ]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"cron": "* * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # a seconds field would fire every second
        ({"cron": "* * * * *", "interval_seconds": 60}, "cron"),
        ({}, "cron"),
        ({"interval_seconds": 1}, "interval_seconds"),
        ({"interval_seconds": "60"}, "interval_seconds"),
        ({"interval_seconds": 60, "timezone": "Mars/Olympus"}, "timezone"),
        ({"interval_seconds": 60, "timezone": "../../etc/passwd"}, "timezone"),
        ({"interval_seconds": 60, "catch_up": "all"}, "catch_up"),
        ({"interval_seconds": 60, "kind": "teleport"}, "kind"),
        ({"interval_seconds": 60, "params": {"duration_s": -1}}, "params.duration_s"),
        ({"interval_seconds": 60, "params": {"bogus": 1}}, "params.bogus"),
        ({"interval_seconds": 60, "priority": 10}, "priority"),
    ],
)
def test_a_bad_schedule_is_a_400_naming_the_field_and_saves_nothing(member, payload, field):
    _, client = member("developer")
    response = client.post("/api/v1/schedules/", {"name": "bad", "kind": "sleep", **payload}, format="json")
    assert response.status_code == 400, response.json()
    body = response.json()
    assert set(body) >= {"detail", "code", "fields"}
    assert field in body["fields"], body
    assert not Schedule.objects.exists()


def test_a_duplicate_name_is_a_400(member):
    membership, client = member("developer")
    make_schedule(membership, name="same")
    response = client.post("/api/v1/schedules/", {"name": "same", "interval_seconds": 60, **SLEEP}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["fields"]


def test_schedules_are_invisible_and_untouchable_across_organizations(member):
    mine, _ = member("owner")
    schedule = make_schedule(mine)
    _, stranger = member("owner")
    assert stranger.get("/api/v1/schedules/").json()["results"] == []
    url = f"/api/v1/schedules/{schedule.pk}/"
    assert stranger.get(url).status_code == 404
    assert stranger.patch(url, {"enabled": False}, format="json").status_code == 404
    assert stranger.delete(url).status_code == 404
    assert Schedule.objects.get(pk=schedule.pk).enabled


def test_roles_decide_who_creates_and_who_changes_someone_elses_schedule(member):
    developer, _ = member("developer")
    organization = developer.organization
    schedule = make_schedule(developer)
    _, viewer = member("viewer", organization=organization)
    _, other_dev = member("developer", organization=organization)
    _, operator = member("operator", organization=organization)
    url = f"/api/v1/schedules/{schedule.pk}/"

    assert viewer.get(url).status_code == 200
    refused = viewer.post("/api/v1/schedules/", {"name": "v", "interval_seconds": 60, **SLEEP}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert other_dev.patch(url, {"enabled": False}, format="json").status_code == 403
    assert other_dev.delete(url).status_code == 403
    assert operator.patch(url, {"enabled": False}, format="json").status_code == 200
    # Analysts may schedule only the kinds they may submit.
    _, analyst = member("analyst", organization=organization)
    sandbox = {"name": "code", "kind": "sandbox", "params": {}, "interval_seconds": 60}
    assert analyst.post("/api/v1/schedules/", sandbox, format="json").status_code == 403


def test_a_schedule_runs_as_whoever_last_changed_its_params(member):
    developer, _ = member("developer")
    operator, operator_client = member("operator", organization=developer.organization)
    schedule = make_schedule(developer)
    response = operator_client.patch(
        f"/api/v1/schedules/{schedule.pk}/", {"params": {"duration_s": 0.02}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["created_by"] == operator.user.username
    schedules_dispatch()  # not due yet
    fired = due(Schedule.objects.get(pk=schedule.pk), 1)
    schedules_dispatch()
    assert Job.objects.get(pk=Schedule.objects.get(pk=fired.pk).last_job_id).owner == operator.user


# --- the dispatcher -----------------------------------------------------------------------


def test_a_due_schedule_fires_once_as_its_creator_and_moves_to_the_next_period(member):
    membership, _ = member("developer")
    schedule = due(make_schedule(membership), 2)
    period = schedule.next_run_at

    first = schedules_dispatch()
    second = schedules_dispatch()

    assert first["fired"] == 1 and second == {"fired": 0, "refused": 0, "skipped": 0, "duplicate": 0}
    job = Job.objects.get()
    assert job.owner == membership.user and job.organization == membership.organization
    assert job.kind == "sleep" and job.params["duration_s"] == 0.01 and job.status == "queued"
    assert job.idempotency_key == f"schedule:{schedule.pk}:{period.isoformat()}"
    schedule.refresh_from_db()
    assert schedule.last_job == job and schedule.last_error is None
    assert schedule.next_run_at == period + timedelta(seconds=60)  # the grid does not drift with lateness


@pytest.mark.parametrize(("catch_up", "jobs"), [("fire_once", 1), ("skip", 0)])
def test_after_three_missed_periods_fire_once_fires_one_and_skip_none(member, catch_up, jobs):
    membership, _ = member("developer")
    schedule = due(make_schedule(membership, catch_up=catch_up), 3 * 60 + 5)
    period = schedule.next_run_at

    for _ in range(3):
        schedules_dispatch()

    assert Job.objects.count() == jobs
    schedule.refresh_from_db()
    assert schedule.next_run_at == period + 4 * timedelta(seconds=60)  # the first period still ahead
    assert schedule.next_run_at > timezone.now()


def test_a_skip_schedule_still_fires_a_period_that_is_only_a_little_late(member):
    membership, _ = member("developer")
    due(make_schedule(membership, catch_up="skip"), 5)
    assert schedules_dispatch()["fired"] == 1


def test_a_firing_refused_by_a_quota_is_recorded_on_the_schedule_and_not_retried(member):
    membership, _ = member("developer")
    organization_quota_set(organization=membership.organization, actor=None, concurrent_jobs={"sleep": 1})
    services.job_submit(membership=membership, **SLEEP)  # takes the one slot
    schedule = due(make_schedule(membership), 1)
    period = schedule.next_run_at

    assert schedules_dispatch()["refused"] == 1
    assert schedules_dispatch()["refused"] == 0  # the period is spent, not retried every second

    schedule.refresh_from_db()
    assert schedule.last_error["code"] == "quota_exceeded"
    assert schedule.last_job is None
    assert schedule.next_run_at == period + timedelta(seconds=60)
    assert Job.objects.count() == 1


def test_a_schedule_whose_creator_left_records_why_and_fires_nothing(member):
    membership, _ = member("developer")
    schedule = due(make_schedule(membership), 1)
    membership.delete()
    assert schedules_dispatch()["refused"] == 1
    schedule.refresh_from_db()
    assert schedule.last_error["code"] == "creator_not_member"
    assert not Job.objects.exists()


def test_a_paused_schedule_does_not_fire(member):
    membership, _ = member("developer")
    schedule = due(make_schedule(membership), 1)
    services.schedule_update(actor=membership, schedule=schedule, enabled=False)
    assert schedules_dispatch()["fired"] == 0
    assert not Job.objects.exists()


def test_cron_periods_follow_the_time_zone_across_daylight_saving_changes(member):
    membership, _ = member("developer")
    berlin = ZoneInfo("Europe/Berlin")
    schedule = make_schedule(membership, cron="30 2 * * *", interval_seconds=None, timezone="Europe/Berlin")
    # 29 March 2026: 02:00 -> 03:00; the day's 02:30 does not exist and fires once, at 03:00.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=berlin)
    periods = [next_period_after(schedule, before)]
    for _ in range(2):
        periods.append(next_period_after(schedule, periods[-1]))
    assert [p.astimezone(UTC).isoformat() for p in periods] == [
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
        "2026-03-31T00:30:00+00:00",
    ]
    hourly = make_schedule(membership, name="hourly", cron="0 * * * *", interval_seconds=None, timezone="Europe/Berlin")
    # 25 October 2026: 03:00 -> 02:00; an hourly schedule fires every real hour, 02:00 twice on the wall clock.
    moment = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    runs = []
    for _ in range(3):
        moment = next_period_after(hourly, moment)
        runs.append(moment.astimezone(UTC).isoformat())
    assert runs == ["2026-10-25T01:00:00+00:00", "2026-10-25T02:00:00+00:00", "2026-10-25T03:00:00+00:00"]


# --- CLI ----------------------------------------------------------------------------------


def test_the_schedules_command_creates_lists_pauses_resumes_and_deletes(member, capsys):
    membership, _ = member("developer")
    who = ["--as", membership.user.username]
    call_command("schedules", "create", "backup", "sleep", "--every", "600", "--params", '{"duration_s": 0.5}', *who)
    call_command("schedules", "list", *who)
    out = capsys.readouterr().out
    assert "backup" in out and "every 600s" in out and "active" in out
    call_command("schedules", "pause", "backup", *who)
    assert not Schedule.objects.get(name="backup").enabled
    call_command("schedules", "resume", "backup", *who)
    assert Schedule.objects.get(name="backup").enabled
    with pytest.raises(CommandError) as refused:
        call_command("schedules", "create", "bad", "sleep", "--cron", "nope", *who)
    assert refused.value.returncode == 2 and "cron" in str(refused.value)
    call_command("schedules", "delete", "backup", *who)
    assert not Schedule.objects.exists()
    with pytest.raises(CommandError) as missing:
        call_command("schedules", "pause", "backup", *who)
    assert missing.value.returncode == 2
