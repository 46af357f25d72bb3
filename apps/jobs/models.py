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
    """A file a job consumed or produced, or one uploaded as a job's input, under MEDIA_ROOT with size and digest.

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
