"""Users, organizations (the tenants), memberships with roles, and API tokens."""

import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    """A person or a service account; what it may see comes from its memberships."""

    email = models.EmailField(blank=True)

    class Meta:
        db_table = "accounts_user"


class Organization(models.Model):
    """The tenant: every job, model, agent and scenario belongs to exactly one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="organizations")

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    OPERATOR = "operator", "Operator"
    DEVELOPER = "developer", "Developer"
    ANALYST = "analyst", "Analyst"
    VIEWER = "viewer", "Viewer"
    SERVICE = "service", "Service"


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org"),
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} as {self.role}"


class ApiToken(models.Model):
    """A bearer credential for one membership. The secret is shown once and stored hashed."""

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # The visible part of the token (`sy_<prefix>_...`), used to find the row and to
    # recognise a token in lists without revealing it.
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (sy_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class OrganizationQuota(models.Model):
    """What one organization may use at once; unset values fall back to settings.ORGANIZATION_QUOTA_DEFAULTS."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="quota")
    # kind -> most active (queued, running or cancelling) jobs of that kind at once.
    concurrent_jobs = models.JSONField(default=dict, blank=True)
    # queue -> most jobs of this organization running at once there (checked by the claim:
    # the rest stay queued, nobody is refused).
    running_jobs = models.JSONField(default=dict, blank=True)
    # Weighted fair share: under contention an organization gets throughput in proportion to
    # its weight (the claim prefers whoever is furthest below their share of recent cost).
    share_weight = models.FloatField(default=1.0)
    # kind -> most jobs of that kind started (claimed) in any 60 s; the rest wait queued.
    starts_per_minute = models.JSONField(default=dict, blank=True)
    # sandbox limit name (cpu_seconds, wall_seconds, memory_mb, ...) -> the most a run may ask for.
    sandbox_limits = models.JSONField(default=dict, blank=True)
    gpu_seconds_per_day = models.PositiveIntegerField(null=True, blank=True)
    # Days a finished job (its events and files) is kept before `manage.py prune` removes it;
    # unset: settings.JOBS_RETENTION_DAYS.
    job_retention_days = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.organization}"


class AuditEvent(models.Model):
    """A security-relevant action: who did what to which object, when. Never changed or deleted."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="audit_org_recent")]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id}"


class Invitation(models.Model):
    """An offer to join an organization with a role; the user named must accept it.

    Addressed to a username rather than a user, so that creating one says nothing about
    whether that user exists (no lookup happens until the addressee answers).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    # Not sequential: an id says nothing about how many invitations the platform holds.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    username = models.CharField(max_length=150)
    role = models.CharField(max_length=16, choices=Role.choices)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    declined_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open invitation per organization and username; an expired one is renewed in place.
            models.UniqueConstraint(
                fields=["organization", "username"],
                condition=models.Q(accepted_at__isnull=True, declined_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_org_username",
            ),
            models.CheckConstraint(condition=models.Q(role__in=Role.values), name="invitation_role_valid"),
            # An invitation ends once: accepted, declined or revoked, never two of them.
            models.CheckConstraint(
                condition=(
                    models.Q(accepted_at__isnull=True, declined_at__isnull=True)
                    | models.Q(accepted_at__isnull=True, revoked_at__isnull=True)
                    | models.Q(declined_at__isnull=True, revoked_at__isnull=True)
                ),
                name="invitation_ends_once",
            ),
        ]
        indexes = [models.Index(fields=["username", "-created_at"], name="invitation_addressee_recent")]

    def __str__(self) -> str:
        return f"{self.username} to {self.organization} as {self.role}"

    @property
    def is_open(self) -> bool:
        """Not yet answered or revoked (it may still have expired)."""
        return self.accepted_at is None and self.declined_at is None and self.revoked_at is None

    @property
    def status(self) -> str:
        if self.accepted_at is not None:
            return self.Status.ACCEPTED
        if self.declined_at is not None:
            return self.Status.DECLINED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.Status.PENDING
