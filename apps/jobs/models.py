"""Jobs, their audit trail, their files and the hosts that run them."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.accounts.models import Organization


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    CANCELLING = "cancelling", "Cancelling"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class FailureOrigin(models.TextChoices):
    """Who a failed job's failure belongs to: what operations must look at, and what the user must fix."""

    SYSTEM = "system", "The system (dead letter: attempts exhausted, a crash, no sandbox)"
    USER = "user", "The job's own input or program"


# Error codes of failures the system caused; every other code is the job's own (its input, its
# program's verdict, its time limit).
SYSTEM_FAILURE_CODES = frozenset({"attempts_exhausted", "internal_error", "sandbox_unavailable", "unknown_kind"})


def failure_origin(error: dict | None) -> str:
    code = (error or {}).get("code")
    return FailureOrigin.SYSTEM if code in SYSTEM_FAILURE_CODES or code is None else FailureOrigin.USER


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATUSES = (JobStatus.RUNNING, JobStatus.CANCELLING)
UNFINISHED_STATUSES = (JobStatus.QUEUED, *ACTIVE_STATUSES)


class Job(models.Model):
    """One unit of work. PostgreSQL is its source of truth and decides what runs next; the broker rings."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: every job write pays for each index (claim and finish change
    # indexed columns, so they are never HOT updates), and the (organization, ...) indexes
    # below already serve every lookup by organization.
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="jobs", db_index=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="jobs")
    kind = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    priority = models.PositiveSmallIntegerField(default=5, help_text="0 (least urgent) to 9 (most urgent)")
    queue = models.CharField(max_length=16)
    params = models.JSONField(default=dict)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="{code, message, details}")
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=200, blank=True)
    # `attempt` is the fencing token: a claim bumps it, and every write a worker makes
    # for the job matches on it, so a worker that lost its lease can no longer write.
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    # NULL, not "": the per-organization unique constraint applies only where a key was given.
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    # sha256 of the submitted request (kind, params, priority, max_attempts): the same key
    # with a different request is refused instead of answered with this job.
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # Indexed only where set (job_children): most jobs have no parent.
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children", db_index=False
    )
    worker_host = models.CharField(max_length=255, blank=True)
    task_id = models.CharField(max_length=64, blank=True, help_text="Celery task id of the latest dispatch")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Not claimed before this time (the database's clock): a retry's backoff, a delayed job.
    run_after = models.DateTimeField(null=True, blank=True)
    # At most `concurrency_limit` running jobs of the organization share one key (e.g. one
    # customer's model, one external API): the claim passes over the rest until one ends.
    concurrency_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001
    concurrency_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set when the job ends failed: `system` jobs are the dead letters operators retry in bulk.
    failure = models.CharField(max_length=8, choices=FailureOrigin.choices, blank=True, default="")
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(priority__lte=9), name="job_priority_0_9"),
            models.CheckConstraint(condition=models.Q(status__in=JobStatus.values), name="job_status_valid"),
            models.CheckConstraint(
                condition=models.Q(progress__gte=0) & models.Q(progress__lte=1), name="job_progress_0_1"
            ),
            models.CheckConstraint(
                condition=models.Q(concurrency_key__isnull=True) | models.Q(concurrency_limit__gte=1),
                name="job_concurrency_key_has_limit",
            ),
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="job_idempotency_key_per_org",
            ),
        ]
        indexes = [
            # The reaper's and dispatcher's scans: queued work by age, active work by lease.
            models.Index(
                fields=["queue", "-priority", "created_at"],
                condition=models.Q(status="queued"),
                name="job_queued_by_priority",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status__in=["running", "cancelling"]),
                name="job_active_by_lease",
            ),
            # Starts per organization and kind in the last minute (OrganizationQuota.starts_per_minute).
            models.Index(
                fields=["organization", "kind", "started_at"],
                condition=models.Q(started_at__isnull=False),
                name="job_org_kind_started",
            ),
            # The claim's walk over the organizations with queued work (fair share), one
            # index probe per organization rather than a scan of the backlog.
            models.Index(
                fields=["queue", "organization", "-priority", "created_at"],
                condition=models.Q(status="queued"),
                name="job_queued_by_organization",
            ),
            models.Index(fields=["organization", "-created_at"], name="job_org_recent"),
            # Quotas count an organization's unfinished jobs of a kind. Only unfinished rows are
            # in it: a finish adds no entry, and the index stays the size of the live work.
            models.Index(
                fields=["organization", "kind"],
                condition=models.Q(status__in=UNFINISHED_STATUSES),
                name="job_org_kind_unfinished",
            ),
            models.Index(fields=["parent"], condition=models.Q(parent__isnull=False), name="job_children"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.short_id} ({self.status})"

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at


class JobEvent(models.Model):
    """Every transition of a job, and who or what caused it: the audit trail."""

    # Served by jobevent_job_time (job, created_at); three events per job are written on its path.
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events", db_index=False)
    created_at = models.DateTimeField(default=timezone.now)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    attempt = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True)
    # Set for people's actions only; workers' events leave it NULL and out of the index.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, db_index=False
    )
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["job", "created_at"], name="jobevent_job_time"),
            models.Index(fields=["actor"], condition=models.Q(actor__isnull=False), name="jobevent_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.from_status or '-'} -> {self.to_status}"


class ArtifactRole(models.TextChoices):
    INPUT = "input", "Input"
    OUTPUT = "output", "Output"


class Artifact(models.Model):
    """A file a job consumed or produced, or one uploaded as a job's input: stored (artifact storage), size, digest.

    Uploaded inputs belong to the organization, not to a job (`job` is NULL): several jobs
    may read one upload, and a job names it in its params (`inputs_artifact`).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="artifacts")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="artifacts", null=True, blank=True)
    role = models.CharField(max_length=8, choices=ArtifactRole.choices)
    name = models.CharField(max_length=255)
    file = models.FileField(upload_to="artifacts/%Y/%m/%d/", max_length=500)
    content_type = models.CharField(default="application/octet-stream", max_length=100)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # What the file holds, read at upload: for arrays {"format": "npz", "arrays": {name: {shape, dtype}}}.
    meta = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["job", "role", "name"], name="artifact_unique_name_per_job"),
            # The same bytes uploaded twice are one upload (the second gets the first back).
            models.UniqueConstraint(
                fields=["organization", "sha256"],
                condition=models.Q(job__isnull=True),
                name="artifact_upload_unique_sha256_per_org",
            ),
            models.CheckConstraint(
                condition=models.Q(job__isnull=False) | models.Q(role="input"), name="artifact_upload_is_input"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


class OrganizationUsage(models.Model):
    """Recent cost of one organization's jobs on one queue, for the claim's fair share.

    Wall seconds of finished attempts (GPU-seconds on `gpu`, CPU-seconds elsewhere), decayed
    with a half-life of JOBS_FAIR_SHARE_HALF_LIFE_SECONDS: `cost_s` is the value at
    `updated_at`, and every reader decays it to its own now(). Written by the finish
    statement; never edited.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    queue = models.CharField(max_length=16)
    cost_s = models.FloatField(default=0.0)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "queue"], name="usage_one_per_org_queue")]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.queue}: {self.cost_s:.1f}s"


class QueueState(models.Model):
    """A queue's run-time switch: while paused, no job of it is claimed (queued jobs wait, none is lost)."""

    name = models.CharField(max_length=16, primary_key=True)
    paused = models.BooleanField(default=False)
    reason = models.CharField(max_length=200, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"


class LeaderLease(models.Model):
    """Who runs a one-at-a-time housekeeping task (reaper, ring) now: taken only once expired.

    A row, not a session-level advisory lock: behind a transaction-mode connection pooler a
    session lock can be left on a pooled connection (or released by someone else's session).
    """

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.CharField(max_length=64)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} (held by {self.holder} until {self.expires_at:%H:%M:%S})"


class WorkerHost(models.Model):
    """A running Celery worker: what it consumes and can do, and when it was last heard from."""

    hostname = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. cpu@host1")
    queues = models.JSONField(default=list)
    capabilities = models.JSONField(default=dict)
    version = models.CharField(max_length=64, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_alive(self) -> bool:
        horizon = timezone.now() - timedelta(seconds=settings.JOBS_WORKER_ALIVE_SECONDS)
        return self.stopped_at is None and self.last_heartbeat_at >= horizon

    @property
    def gpu_problem(self) -> str:
        """Why this host cannot do the gpu queue's work, or "" (the admin and the dashboard flag it).

        Routing sends gpu inference only to hosts reporting the CUDA provider; a `gpu` worker
        without it (onnxruntime without CUDA, no driver) looks alive and gets no such work, and
        what it does take (a compile validation on `gpu`) runs on the CPU.
        """
        if "gpu" not in (self.queues or []):
            return ""
        providers = (self.capabilities or {}).get("providers") or []
        if "CUDAExecutionProvider" in providers:
            return ""
        return (
            f"serves the gpu queue but reports no GPU provider (providers: {', '.join(providers) or 'none'}); "
            "gpu inference goes to cpu: install onnxruntime-gpu (REQUIREMENTS=gpu.txt) and the CUDA libraries"
        )


# The Schedule model has a field named `timezone`, which shadows the module in its class body.
_now = timezone.now


class CatchUp(models.TextChoices):
    FIRE_ONCE = "fire_once", "Fire once"
    SKIP = "skip", "Skip"


class Schedule(models.Model):
    """A job submitted periodically (a cron expression or an interval) in its organization, as its creator.

    `next_run_at` is the period the dispatcher fires next: it claims due rows with `FOR UPDATE
    SKIP LOCKED` and advances `next_run_at` in the transaction that inserts the job, so each
    period fires once however many dispatchers run (apps/jobs/services/schedules.py).
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="schedules")
    # The member the jobs are submitted as (their owner; their role's permissions and quotas apply).
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32)
    params = models.JSONField(default=dict)
    priority = models.PositiveSmallIntegerField(default=5)
    cron = models.CharField(max_length=100, blank=True, help_text="5-field cron expression, in `timezone`")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    catch_up = models.CharField(max_length=16, choices=CatchUp.choices, default=CatchUp.FIRE_ONCE)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Why the last firing made no job ({code, message, at}), e.g. a quota refused it; NULL once one succeeds.
    last_error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=_now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="schedule_name_per_org"),
            models.CheckConstraint(
                condition=(models.Q(cron="") & models.Q(interval_seconds__gte=1))
                | (~models.Q(cron="") & models.Q(interval_seconds__isnull=True)),
                name="schedule_cron_or_interval",
            ),
            models.CheckConstraint(condition=models.Q(priority__lte=9), name="schedule_priority_0_9"),
        ]
        indexes = [
            # The dispatcher's scan: enabled schedules by when they are due.
            models.Index(fields=["next_run_at"], condition=models.Q(enabled=True), name="schedule_due"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def every(self) -> str:
        return self.cron or f"every {self.interval_seconds}s"


class ControlRun(models.Model):
    """One housekeeping task (reap, ring, dispatch_schedules, prune): its runs, errors and last success.

    Written by every run (apps/jobs/tasks.py), read by `/metrics` at scrape time, so a dead
    reaper shows as a growing age there (docs/decisions/0006).
    """

    task = models.CharField(max_length=32, primary_key=True)
    runs = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["task"]

    def __str__(self) -> str:
        return self.task


class ControlCount(models.Model):
    """A running total of what a housekeeping task did (`reap`/`leases_expired`, `prune`/`jobs_pruned`, ...)."""

    task = models.CharField(max_length=32)
    name = models.CharField(max_length=64)
    value = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["task", "name"]
        constraints = [models.UniqueConstraint(fields=["task", "name"], name="control_count_per_task_name")]

    def __str__(self) -> str:
        return f"{self.task}.{self.name}={self.value}"
