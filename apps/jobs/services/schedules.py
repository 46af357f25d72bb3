"""Periodic schedules in PostgreSQL: create, change, pause, delete, and the dispatcher that fires them.

Exactly one firing per period however many beats or dispatchers run: the dispatcher claims a
due row with `SELECT ... FOR UPDATE SKIP LOCKED` and, in that same transaction, inserts the
job (through `job_submit`, the service a REST submit uses) and moves `next_run_at` past the
period. A second dispatcher skips the locked row, and once the first commits the row is no
longer due; if the first dies before committing, neither the job nor the advance exists. No
advisory lock is held across statements, so a transaction-mode pooler cannot leak one.
"""

import functools
import logging
import math
import zoneinfo
from datetime import datetime, timedelta

from croniter import croniter
from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now

from apps.accounts.models import Membership
from apps.accounts.permissions import (
    MANAGE_ANY_SCHEDULE,
    MANAGE_SCHEDULES,
    Actor,
    PlatformOperator,
    has_permission,
    may_submit_kind,
    require,
)
from apps.accounts.services import audit_record
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs.models import CatchUp, Schedule
from apps.jobs.quotas import organization_quota, quota_check_params
from apps.jobs.services.submit import job_submit, validate_params

logger = logging.getLogger(__name__)

MAX_INTERVAL_SECONDS = 366 * 24 * 3600
# Fields a change may set; `enabled` alone is pause/resume.
CHANGEABLE = ("name", "kind", "params", "priority", "cron", "interval_seconds", "timezone", "catch_up", "enabled")


# --- periods -------------------------------------------------------------------------------


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def next_period_after(schedule: Schedule, moment: datetime) -> datetime:
    """The first period of the schedule strictly after `moment`.

    Cron runs on the wall clock of the schedule's time zone (zoneinfo, so DST-correct: a
    02:30 that does not exist on a spring-forward day fires at 03:00, once). Intervals are a
    grid from the schedule's current `next_run_at`, so a late firing does not drift the grid.
    """
    if schedule.cron:
        local = moment.astimezone(zoneinfo.ZoneInfo(schedule.timezone))
        return croniter(schedule.cron, local).get_next(datetime)
    step = timedelta(seconds=schedule.interval_seconds)
    anchor = schedule.next_run_at
    if anchor is None or anchor > moment:
        return moment + step
    periods = math.floor((moment - anchor) / step) + 1
    return anchor + periods * step


# --- create, change, delete ----------------------------------------------------------------


def _clean_when(*, cron: str, interval_seconds, timezone: str) -> tuple[str, int | None, str]:
    cron = (cron or "").strip()
    if bool(cron) == (interval_seconds is not None):
        raise DomainError(
            "cron: give a cron expression or interval_seconds, not both.",
            fields={"cron": ["Give exactly one of cron and interval_seconds."]},
        )
    if cron:
        # Five fields only: croniter also takes a sixth (seconds), which would let a schedule
        # fire every second.
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            raise DomainError(
                f"cron: '{cron}' is not a 5-field cron expression.",
                fields={"cron": ["Give 5 fields: minute hour day-of-month month day-of-week, e.g. '*/15 * * * *'."]},
            )
    else:
        low = settings.SCHEDULES_MIN_INTERVAL_SECONDS
        if (
            not isinstance(interval_seconds, int)
            or isinstance(interval_seconds, bool)
            or not low <= interval_seconds <= MAX_INTERVAL_SECONDS
        ):
            raise DomainError(
                f"interval_seconds: an integer from {low} to {MAX_INTERVAL_SECONDS}.",
                fields={"interval_seconds": [f"Must be {low}-{MAX_INTERVAL_SECONDS}."]},
            )
    if timezone not in _timezones():
        raise DomainError(
            f"timezone: unknown time zone '{timezone}'.",
            fields={"timezone": ["Give an IANA time zone name, e.g. 'Europe/Berlin' or 'UTC'."]},
        )
    return cron, interval_seconds, timezone


def _clean_job(*, membership: Membership, kind: str, params, priority) -> dict:
    """The job a firing will submit, checked now as a submit would check it (the role, the kind's params, quotas)."""
    if not may_submit_kind(membership, kind):
        raise PermissionDenied(
            f"Role '{membership.role}' may not submit {kind} jobs.", details={"action": "jobs.submit", "kind": kind}
        )
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise DomainError("priority: must be an integer from 0 to 9.", fields={"priority": ["Must be 0-9."]})
    _kind, clean_params = validate_params(kind, params, membership)
    quota_check_params(quota=organization_quota(membership.organization), kind=kind, params=clean_params)
    return clean_params


def _clean_name(organization_id: int, name, *, exclude_pk: int | None = None) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise DomainError("name: 1 to 100 characters.", fields={"name": ["1 to 100 characters."]})
    if Schedule.objects.filter(organization_id=organization_id, name=name).exclude(pk=exclude_pk).exists():
        raise DomainError(
            f"name: a schedule named '{name}' exists.", fields={"name": ["A schedule with this name exists."]}
        )
    return name


def _clean_catch_up(catch_up: str) -> str:
    if catch_up not in CatchUp.values:
        choices = ", ".join(CatchUp.values)
        raise DomainError(f"catch_up: one of {choices}.", fields={"catch_up": [f"One of {choices}."]})
    return catch_up


def schedule_create(
    *,
    membership: Membership,
    name: str,
    kind: str,
    params: dict,
    cron: str = "",
    interval_seconds: int | None = None,
    timezone: str = "UTC",
    catch_up: str = CatchUp.FIRE_ONCE,
    enabled: bool = True,
    priority: int = 5,
) -> Schedule:
    """Save a schedule whose jobs would be accepted now; it fires first at its next period (audited)."""
    require(membership, MANAGE_SCHEDULES, "create schedules")
    cron, interval_seconds, timezone = _clean_when(cron=cron, interval_seconds=interval_seconds, timezone=timezone)
    schedule = Schedule(
        organization=membership.organization,
        created_by=membership.user,
        name=_clean_name(membership.organization_id, name),
        kind=kind,
        params=_clean_job(membership=membership, kind=kind, params=params, priority=priority),
        priority=priority,
        cron=cron,
        interval_seconds=interval_seconds,
        timezone=timezone,
        catch_up=_clean_catch_up(catch_up),
        enabled=bool(enabled),
    )
    with transaction.atomic():
        if Schedule.objects.filter(organization=membership.organization).count() >= (
            settings.SCHEDULES_MAX_PER_ORGANIZATION
        ):
            raise DomainError(
                f"name: the organization has {settings.SCHEDULES_MAX_PER_ORGANIZATION} schedules, the most it may.",
                fields={"name": ["Delete a schedule first."]},
                details={"limit": settings.SCHEDULES_MAX_PER_ORGANIZATION},
            )
        schedule.next_run_at = next_period_after(schedule, _db_now()) if schedule.enabled else None
        schedule.save()
        audit_record(
            organization=membership.organization,
            actor=membership,
            action="schedule.created",
            target=schedule,
            details={"name": schedule.name, "kind": kind, "every": schedule.every},
        )
    logger.info("schedule.created", extra={"schedule_id": schedule.pk, "organization_id": membership.organization_id})
    return schedule


def _require_may_change(actor: Actor, schedule: Schedule) -> None:
    if schedule.organization_id != actor.organization_id:
        raise DomainError("schedule: no such schedule.", fields={"schedule": ["No such schedule."]})
    if schedule.created_by_id == actor.user_id:
        require(actor, MANAGE_SCHEDULES, "change schedules")
    elif not has_permission(actor, MANAGE_ANY_SCHEDULE):
        raise PermissionDenied(
            f"Role '{actor.role}' may not change another member's schedule.", details={"action": MANAGE_ANY_SCHEDULE}
        )


def _runner(schedule: Schedule) -> Membership | None:
    """The membership a firing submits as: the schedule's creator, while still an active member."""
    if schedule.created_by_id is None:
        return None
    return (
        Membership.objects.select_related("user", "organization")
        .filter(organization_id=schedule.organization_id, user_id=schedule.created_by_id, user__is_active=True)
        .first()
    )


def schedule_update(*, actor: Actor, schedule: Schedule, **changes) -> Schedule:
    """Change a schedule (audited). Changing its timing or resuming it moves the next firing to the next period
    from now: a paused schedule does not fire what it missed. Changing the kind, params or priority makes the member who
    changes them the one its jobs run as, so a schedule never runs work its runner did not write.
    """
    unknown = sorted(set(changes) - set(CHANGEABLE))
    if unknown:
        raise DomainError(
            f"{unknown[0]}: cannot be changed.", fields={name: ["Cannot be changed."] for name in unknown}
        )
    _require_may_change(actor, schedule)
    changed = dict(changes)
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule.pk)
        if "name" in changed:
            schedule.name = _clean_name(schedule.organization_id, changed["name"], exclude_pk=schedule.pk)
        timing = {"cron", "interval_seconds", "timezone"} & set(changed)
        if timing:
            cron = changed.get("cron", schedule.cron)
            interval = changed.get("interval_seconds", schedule.interval_seconds)
            # Giving one of cron and interval_seconds replaces the other.
            if changed.get("cron") and "interval_seconds" not in changed:
                interval = None
            if changed.get("interval_seconds") is not None and "cron" not in changed:
                cron = ""
            schedule.cron, schedule.interval_seconds, schedule.timezone = _clean_when(
                cron=cron, interval_seconds=interval, timezone=changed.get("timezone", schedule.timezone)
            )
        if {"kind", "params", "priority"} & set(changed):
            runner = _runner(schedule) if isinstance(actor, PlatformOperator) else actor
            if runner is None:
                raise DomainError(
                    "kind: the schedule's creator is no longer a member; a member must change it.",
                    fields={"kind": ["The creator is no longer a member."]},
                )
            kind = changed.get("kind", schedule.kind)
            priority = changed.get("priority", schedule.priority)
            schedule.params = _clean_job(
                membership=runner, kind=kind, params=changed.get("params", schedule.params), priority=priority
            )
            schedule.kind, schedule.priority = kind, priority
            schedule.created_by_id = runner.user_id
        if "catch_up" in changed:
            schedule.catch_up = _clean_catch_up(changed["catch_up"])
        resumed = "enabled" in changed and bool(changed["enabled"]) and not schedule.enabled
        if "enabled" in changed:
            schedule.enabled = bool(changed["enabled"])
        if not schedule.enabled:
            schedule.next_run_at = None
        elif timing or resumed or schedule.next_run_at is None:
            schedule.next_run_at = None  # a new grid starts from now
            schedule.next_run_at = next_period_after(schedule, _db_now())
        schedule.save()
        audit_record(
            organization=schedule.organization_id,
            actor=actor,
            action=_change_action(changed),
            target=schedule,
            details={"name": schedule.name, "changed": sorted(changed)},
        )
    return schedule


def _change_action(changed: dict) -> str:
    if set(changed) == {"enabled"}:
        return "schedule.resumed" if changed["enabled"] else "schedule.paused"
    return "schedule.changed"


def schedule_delete(*, actor: Actor, schedule: Schedule) -> None:
    """Delete a schedule (audited); the jobs it submitted stay."""
    _require_may_change(actor, schedule)
    with transaction.atomic():
        audit_record(
            organization=schedule.organization_id,
            actor=actor,
            action="schedule.deleted",
            target=schedule,
            details={"name": schedule.name, "kind": schedule.kind},
        )
        schedule.delete()


# --- the dispatcher --------------------------------------------------------------------------


def _db_now() -> datetime:
    """PostgreSQL's clock (in a transaction, its start): one clock for every dispatcher and the claim."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def schedules_dispatch(*, limit: int = 200) -> dict[str, int]:
    """Fire every due schedule once (at most `limit` firings a run). Returns counts: fired, refused, skipped, duplicate.

    Each schedule is one short transaction: claim the row (`SKIP LOCKED`: another dispatcher
    holding it means that one fires it), submit its job, advance `next_run_at`.
    """
    counts = {"fired": 0, "refused": 0, "skipped": 0, "duplicate": 0}
    failed: list[int] = []
    for _ in range(limit):
        schedule = None
        try:
            with transaction.atomic():
                schedule = (
                    Schedule.objects.select_for_update(skip_locked=True)
                    .filter(enabled=True, next_run_at__lte=Now())
                    .exclude(pk__in=failed)
                    .order_by("next_run_at")
                    .first()
                )
                if schedule is None:
                    break
                outcome = _fire(schedule)
        except Exception:
            # One broken schedule must not stop the others; it is tried again on the next run.
            logger.exception("schedule.dispatch_failed", extra={"schedule_id": getattr(schedule, "pk", None)})
            if schedule is None:
                raise
            failed.append(schedule.pk)
            continue
        counts[outcome] += 1
    return counts


def _fire(schedule: Schedule) -> str:
    """Inside the claiming transaction: submit the period's job (or not, per catch-up) and advance."""
    now = _db_now()
    due = schedule.next_run_at
    following = next_period_after(schedule, due)
    # Periods the dispatcher missed (it was down) leave a later period due too; a late firing
    # within its period does not.
    missed = following <= now
    late_s = (now - due).total_seconds()
    fire = schedule.catch_up == CatchUp.FIRE_ONCE or (not missed and late_s <= settings.SCHEDULES_MISFIRE_GRACE_SECONDS)
    outcome = "skipped"
    if fire:
        outcome = _submit(schedule, due=due, now=now)
    schedule.next_run_at = next_period_after(schedule, now) if missed else following
    schedule.save(update_fields=["next_run_at", "last_run_at", "last_job", "last_error", "updated_at"])
    logger.info(
        "schedule.fired" if outcome == "fired" else f"schedule.{outcome}",
        extra={
            "schedule_id": schedule.pk,
            "organization_id": schedule.organization_id,
            "job_id": str(schedule.last_job_id) if outcome == "fired" else None,
            "missed": missed,
        },
    )
    return outcome


def _submit(schedule: Schedule, *, due: datetime, now: datetime) -> str:
    runner = _runner(schedule)
    schedule.last_run_at = now
    if runner is None:
        schedule.last_error = {
            "code": "creator_not_member",
            "message": "The member this schedule runs as is no longer in the organization; a member must change it.",
            "at": now.isoformat(),
        }
        return "refused"
    try:
        with transaction.atomic():  # a savepoint: a refused submit leaves the schedule's advance
            # The key names the period: even a second firing of it would find the first job.
            job, created = job_submit(
                membership=runner,
                kind=schedule.kind,
                params=schedule.params,
                priority=schedule.priority,
                idempotency_key=f"schedule:{schedule.pk}:{due.isoformat()}",
            )
    except DomainError as exc:
        # Refused (a quota, a backlog cap, the role, params no longer valid): recorded on the
        # schedule, and the period is spent, not retried forever.
        schedule.last_error = {"code": exc.code, "message": exc.message, "at": now.isoformat()}
        return "refused"
    schedule.last_job, schedule.last_error = job, None
    if not created:
        # The period's job exists already: a firing repeated despite the row lock (which
        # should be impossible), answered by the key instead of a second job. Counted apart
        # so `/metrics` and the tests would show it.
        logger.warning("schedule.fired_twice", extra={"schedule_id": schedule.pk, "job_id": str(job.pk)})
        return "duplicate"
    return "fired"
