"""ML models, their ONNX versions and the aliases that pick a version for a job."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps.accounts.models import Organization


class ModelTask(models.TextChoices):
    EMBEDDING = "embedding", "Embedding"
    CLASSIFICATION = "classification", "Classification"
    GENERIC = "generic", "Generic"


class Stage(models.TextChoices):
    DRAFT = "draft", "Draft"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"


class DevicePreference(models.TextChoices):
    CPU = "cpu", "CPU only"
    GPU = "gpu", "GPU preferred"
    AUTO = "auto", "Any"


class MLModel(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="ml_models")
    name = models.SlugField(max_length=100)
    task = models.CharField(max_length=16, choices=ModelTask.choices, default=ModelTask.GENERIC)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "ML model"
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="mlmodel_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.FileField(upload_to="models/", max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    signature = models.JSONField(help_text="{inputs: [{name, dtype, shape}], outputs: [...]}")
    ir_version = models.PositiveIntegerField()
    opset = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Of the default (ai.onnx) domain; empty for a model that imports only other domains (ai.onnx.ml).",
    )
    producer = models.CharField(max_length=200, blank=True)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.DRAFT)
    device_preference = models.CharField(max_length=8, choices=DevicePreference.choices, default=DevicePreference.AUTO)
    derived_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="derived")
    report = models.JSONField(default=dict, blank=True)
    batching = models.JSONField(
        default=dict,
        blank=True,
        help_text="The upload-time probe: {batch_axis, rows_independent, split, zero_rows, reason}; "
        "rows are split into batches only where split is true.",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="modelversion_unique_number"),
            models.UniqueConstraint(fields=["model", "sha256"], name="modelversion_unique_sha256"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.number}"


class AliasName(models.TextChoices):
    PRODUCTION = "production", "Production"
    CANARY = "canary", "Canary"


class ModelAlias(models.Model):
    """`name@production`, `name@canary` and named ones (`name@stable`), each pointing at one version.

    A job naming only the model gets canary with `weight`% chance, production otherwise.
    Production and canary follow the stages (`model_version_promote`); named aliases are
    set and removed by `model_alias_set` / `model_alias_remove`.
    """

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=32)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    weight = models.PositiveSmallIntegerField(default=100, help_text="canary: percent of traffic (0-100)")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="modelalias_unique_per_model"),
            models.CheckConstraint(condition=models.Q(weight__lte=100), name="modelalias_weight_0_100"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class ModelAliasEvent(models.Model):
    """One move of an alias: who pointed which alias of a model at which version, when and why.

    Written by the registry services in the same transaction as the move, never updated:
    the alias's state at any time T is its latest event at or before T (`version` null: the
    alias was removed).
    """

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="alias_events")
    alias = models.CharField(max_length=32)
    version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="alias_events"
    )
    previous_version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    weight = models.PositiveSmallIntegerField(null=True, blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["model", "alias", "-created_at"], name="aliasevent_model_alias_time")]

    def __str__(self) -> str:
        target = f"version {self.version.number}" if self.version_id else "removed"
        return f"{self.model.name}@{self.alias} -> {target}"
