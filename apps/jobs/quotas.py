"""Organization quotas checked at submit: active jobs per kind, sandbox limit caps, GPU seconds per day.

A refusal names the quota, its limit and the current use, so the caller knows what to
wait for or whom to ask.
"""

import time as monotonic_time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.db import connection, models
from django.db.models import F, Sum
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from apps.accounts.models import Organization, OrganizationQuota
from apps.core.errors import DomainError, QuotaExceeded
from apps.jobs.models import ACTIVE_STATUSES, UNFINISHED_STATUSES, Job
from project import queues

QUOTA_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Quota:
    concurrent_jobs: dict[str, int] = field(default_factory=dict)
    running_jobs: dict[str, int] = field(default_factory=dict)
    starts_per_minute: dict[str, int] = field(default_factory=dict)
    sandbox_limits: dict[str, float] = field(default_factory=dict)
    gpu_seconds_per_day: int | None = None


_quota_cache: dict[int, tuple[float, Quota]] = {}
QUOTA_CACHE_SECONDS = 2.0


def organization_quota(organization: Organization) -> Quota:
    """The effective quota, read at most every QUOTA_CACHE_SECONDS per process.

    Submit is on every job's path and the quota row rarely changes: a change reaches
    other processes within seconds (and this one at once, see `forget_quota`).
    """
    now = monotonic_time.monotonic()
    cached = _quota_cache.get(organization.pk)
    if cached is None or now - cached[0] > QUOTA_CACHE_SECONDS:
        cached = (now, _load_quota(organization))
        _quota_cache[organization.pk] = cached
    return cached[1]


def forget_quota(organization_id: int) -> None:
    _quota_cache.pop(organization_id, None)


def _load_quota(organization: Organization) -> Quota:
    defaults = settings.ORGANIZATION_QUOTA_DEFAULTS
    own = OrganizationQuota.objects.filter(organization=organization).first()
    if own is None:
        return Quota(
            concurrent_jobs=dict(defaults["concurrent_jobs"]),
            running_jobs=dict(defaults["running_jobs"]),
            starts_per_minute=dict(defaults.get("starts_per_minute", {})),
            sandbox_limits=dict(defaults["sandbox_limits"]),
            gpu_seconds_per_day=defaults["gpu_seconds_per_day"],
        )
    return Quota(
        concurrent_jobs={**defaults["concurrent_jobs"], **own.concurrent_jobs},
        running_jobs={**defaults["running_jobs"], **own.running_jobs},
        starts_per_minute={**defaults.get("starts_per_minute", {}), **own.starts_per_minute},
        sandbox_limits={**defaults["sandbox_limits"], **own.sandbox_limits},
        gpu_seconds_per_day=(
            own.gpu_seconds_per_day if own.gpu_seconds_per_day is not None else defaults["gpu_seconds_per_day"]
        ),
    )


def quota_check_params(*, quota: Quota, kind: str, params: dict) -> None:
    """Caps on what one job may ask for (before any row is written): sandbox limits."""
    if kind != "sandbox":
        return
    for name, cap in sorted(quota.sandbox_limits.items()):
        asked = params["limits"].get(name)
        if asked is not None and asked > cap:
            raise DomainError(
                f"params.limits.{name}: {asked} exceeds the organization's quota of {cap}.",
                fields={f"params.limits.{name}": [f"At most {cap} (organization quota sandbox_limits.{name})."]},
                details={"quota": f"sandbox_limits.{name}", "limit": cap, "requested": asked},
            )


def quota_needs_transaction(*, quota: Quota, kind: str) -> bool:
    """Whether admitting this kind takes a lock that must be held until the job row commits."""
    return quota.concurrent_jobs.get(kind) is not None


def quota_admit(*, quota: Quota, organization: Organization, kind: str, queue: str) -> None:
    """Usage quotas, checked inside the submit transaction so that racing submits cannot both pass."""
    quota_admit_many(quota=quota, organization=organization, counts={(kind, queue): 1})


def quota_admit_many(*, quota: Quota, organization: Organization, counts: dict[tuple[str, str], int]) -> None:
    """Usage quotas for `counts[(kind, queue)]` new jobs at once (a bulk submit), inside its transaction."""
    per_kind: dict[str, int] = {}
    for (kind, _), count in counts.items():
        per_kind[kind] = per_kind.get(kind, 0) + count
    for kind, adding in sorted(per_kind.items()):
        limit = quota.concurrent_jobs.get(kind)
        if limit is None:
            continue
        # Serialises submits of one kind in one organization until commit; other kinds and
        # organizations are not held up.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [organization.pk, _kind_key(kind)])
        active = Job.objects.filter(organization=organization, kind=kind, status__in=UNFINISHED_STATUSES).count()
        if active + adding > limit:
            asking = "" if adding == 1 else f"; this request adds {adding}"
            raise QuotaExceeded(
                f"Quota concurrent_jobs.{kind}: {active} of {limit} {kind} jobs are active{asking}; "
                "wait for some to finish or ask for a higher quota.",
                details={
                    "quota": f"concurrent_jobs.{kind}",
                    "limit": limit,
                    "used": active,
                    "retry_after_s": QUOTA_RETRY_AFTER_S,
                },
            )
    if any(queue == queues.GPU for _, queue in counts) and quota.gpu_seconds_per_day is not None:
        used = gpu_seconds_today(organization)
        if used >= quota.gpu_seconds_per_day:
            raise QuotaExceeded(
                f"Quota gpu_seconds_per_day: {used:.0f} of {quota.gpu_seconds_per_day} GPU seconds used today (UTC).",
                details={
                    "quota": "gpu_seconds_per_day",
                    "limit": quota.gpu_seconds_per_day,
                    "used": round(used, 1),
                    "retry_after_s": _seconds_until_utc_midnight(),
                },
            )


def gpu_seconds_today(organization: Organization) -> float:
    """Wall-clock seconds of this organization's gpu-queue jobs started today (UTC), running ones so far."""
    midnight = datetime.combine(timezone.now().astimezone(UTC).date(), time.min, tzinfo=UTC)
    total = Job.objects.filter(
        organization=organization, queue=queues.GPU, started_at__gte=midnight, started_at__isnull=False
    ).aggregate(seconds=Sum(Coalesce(F("finished_at"), Now()) - F("started_at")))["seconds"]
    return total.total_seconds() if total is not None else 0.0


def _kind_key(kind: str) -> int:
    # pg_advisory_xact_lock(int4, int4): a stable 31-bit number per kind name.
    return zlib.crc32(kind.encode()) & 0x7FFFFFFF


def _seconds_until_utc_midnight() -> int:
    now = timezone.now().astimezone(UTC)
    tomorrow = datetime.combine(now.date(), time.min, tzinfo=UTC).timestamp() + 86400
    return max(1, int(tomorrow - now.timestamp()))


def _started_last_minute(organization: Organization, kind: str) -> int:
    return Job.objects.filter(
        organization=organization, kind=kind, started_at__gt=Now() - timedelta(seconds=60)
    ).count()


def _share_weight(organization: Organization) -> float:
    own = OrganizationQuota.objects.filter(organization=organization).values_list("share_weight", flat=True).first()
    return own if own is not None else 1.0


def quota_usage(organization: Organization) -> dict:
    """The effective quota beside the current use, for the quota endpoint and the admin."""
    from apps.jobs.kinds import all_kinds

    quota = organization_quota(organization)
    active = dict(
        Job.objects.filter(organization=organization, status__in=UNFINISHED_STATUSES)
        .values_list("kind")
        .annotate(n=models.Count("id"))
        .values_list("kind", "n")
    )
    running = dict(
        Job.objects.filter(organization=organization, status__in=ACTIVE_STATUSES)
        .values_list("queue")
        .annotate(n=models.Count("id"))
        .values_list("queue", "n")
    )
    return {
        "concurrent_jobs": {
            kind: {"limit": quota.concurrent_jobs.get(kind), "used": active.get(kind, 0)}
            for kind in sorted(all_kinds())
        },
        "running_jobs": {
            queue: {"limit": quota.running_jobs.get(queue), "used": running.get(queue, 0)}
            for queue in (queues.CPU, queues.GPU)
        },
        "starts_per_minute": {
            kind: {"limit": limit, "used": _started_last_minute(organization, kind)}
            for kind, limit in sorted(quota.starts_per_minute.items())
        },
        "share_weight": _share_weight(organization),
        "sandbox_limits": quota.sandbox_limits,
        "gpu_seconds_per_day": {"limit": quota.gpu_seconds_per_day, "used": round(gpu_seconds_today(organization), 1)},
    }
