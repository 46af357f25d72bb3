"""Writes for the model registry: upload (validated), promote, archive."""

import logging
import random
import re
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import Max

from apps.accounts.models import Membership
from apps.accounts.permissions import PROMOTE_MODELS, UPLOAD_MODELS, has_permission
from apps.accounts.services import audit_record
from apps.core.errors import Conflict, DomainError, NotFound, PermissionDenied
from apps.registry.models import AliasName, DevicePreference, MLModel, ModelAlias, ModelTask, ModelVersion, Stage
from workers.onnx_models import ModelValidationError, inspect_model

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")


def _validate_choice(value: str, choices, field: str) -> None:
    if value not in choices.values:
        raise DomainError(
            f"{field}: must be one of {', '.join(choices.values)}.",
            fields={field: [f"Must be one of {', '.join(choices.values)}."]},
        )


def model_version_upload(
    *,
    membership: Membership,
    name: str,
    source,
    task: str = ModelTask.GENERIC,
    description: str = "",
    device_preference: str = DevicePreference.AUTO,
) -> tuple[ModelVersion, bool]:
    """Validate an ONNX file and register it as the model's next version.

    `source` is a path or a readable binary file. Returns (version, created); the same
    bytes uploaded again return the existing version. A refused upload leaves no row
    and no file behind.
    """
    if not has_permission(membership, UPLOAD_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not upload models.")
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise DomainError(
            "name: lowercase letters, digits, '-' and '_', starting with a letter or digit.",
            fields={"name": ["Lowercase letters, digits, '-' and '_' (at most 100)."]},
        )
    _validate_choice(task, ModelTask, "task")
    _validate_choice(device_preference, DevicePreference, "device_preference")

    with tempfile.TemporaryDirectory(prefix="upload-") as workdir:
        staged = Path(workdir) / "model.onnx"
        _stage(source, staged)
        try:
            info = inspect_model(staged, max_bytes=settings.REGISTRY_MAX_MODEL_BYTES)
        except ModelValidationError as exc:
            raise DomainError(
                f"file: {exc.message}", fields={"file": [exc.message]}, details={"code": exc.code, **exc.details}
            ) from exc
        return _register(
            membership=membership,
            name=name,
            staged=staged,
            info=info,
            task=task,
            description=description,
            device_preference=device_preference,
        )


def _stage(source, target: Path) -> None:
    limit = settings.REGISTRY_MAX_MODEL_BYTES
    if isinstance(source, (str, Path)):
        source_path = Path(source)
        if not source_path.is_file():
            raise DomainError(f"file: no such file {source_path}.", fields={"file": ["No such file."]})
        shutil.copyfile(source_path, target)
        return
    written = 0
    with target.open("wb") as out:
        for chunk in source.chunks() if hasattr(source, "chunks") else iter(lambda: source.read(1 << 20), b""):
            written += len(chunk)
            if written > limit:
                # Stop reading: a huge upload is refused without landing on disk whole.
                raise DomainError(
                    f"file: larger than the limit of {limit} bytes.",
                    fields={"file": [f"At most {limit} bytes."]},
                    details={"code": "too_large"},
                )
            out.write(chunk)


@transaction.atomic
def _register(*, membership, name, staged: Path, info, task, description, device_preference):
    model, _ = MLModel.objects.get_or_create(
        organization=membership.organization, name=name, defaults={"task": task, "description": description}
    )
    model = MLModel.objects.select_for_update().get(pk=model.pk)  # numbers are handed out one at a time
    existing = model.versions.filter(sha256=info.sha256).first()
    if existing is not None:
        return existing, False
    number = (model.versions.aggregate(top=Max("number"))["top"] or 0) + 1
    version = ModelVersion(
        model=model,
        number=number,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        signature={"inputs": [t.to_dict() for t in info.inputs], "outputs": [t.to_dict() for t in info.outputs]},
        ir_version=info.ir_version,
        opset=info.opset,
        producer=info.producer or "",
        device_preference=device_preference,
        created_by=membership.user,
    )
    storage_name = f"{membership.organization.slug}/{name}/{number}-{info.sha256[:12]}.onnx"
    with staged.open("rb") as handle:
        version.file.save(storage_name, File(handle), save=False)
    stored = version.file.name
    try:
        version.save()
    except Exception:
        # No row, no file: the stored copy goes with the failed insert.
        version.file.storage.delete(stored)
        raise
    logger.info(
        "model.uploaded",
        extra={"model": name, "version": number, "sha256": info.sha256, "organization_id": membership.organization_id},
    )
    return version, True


def model_version_get(*, membership: Membership, reference: str) -> ModelVersion:
    """`name` (production, or canary by its weight), `name@N`, `name@production`, `name@canary`."""
    name, _, selector = reference.partition("@")
    model = MLModel.objects.filter(organization=membership.organization, name=name).first()
    if model is None:
        raise NotFound(f"No model named '{name}'.")
    if selector.isdigit():
        version = model.versions.filter(number=int(selector)).first()
    elif selector in AliasName.values:
        alias = model.aliases.select_related("version").filter(name=selector).first()
        version = alias.version if alias else None
    elif selector == "":
        aliases = {a.name: a for a in model.aliases.select_related("version")}
        canary = aliases.get(AliasName.CANARY)
        if canary and random.randrange(100) < canary.weight:  # noqa: S311 - traffic split, not security
            version = canary.version
        else:
            production = aliases.get(AliasName.PRODUCTION)
            version = production.version if production else None
    else:
        raise DomainError(
            f"model: '{selector}' is neither a version number nor an alias.",
            fields={"model": ["Use name, name@N, name@production or name@canary."]},
        )
    if version is None:
        raise NotFound(f"Model '{reference}' has no such version.")
    return version


@transaction.atomic
def model_version_promote(
    *, membership: Membership, version: ModelVersion, stage: str, canary_weight: int | None = None
) -> ModelVersion:
    """Move a version to a stage; `production` also moves the production alias (the previous one is archived)."""
    if not has_permission(membership, PROMOTE_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not promote models.")
    _validate_choice(stage, Stage, "stage")
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if version.model.organization_id != membership.organization_id:
        raise NotFound("No such model.")
    if version.stage == Stage.ARCHIVED and stage != Stage.ARCHIVED:
        raise Conflict(f"{version} is archived; upload it again to use it.")
    if stage == Stage.PRODUCTION:
        previous = ModelAlias.objects.filter(model=version.model, name=AliasName.PRODUCTION).first()
        if previous is not None and previous.version_id != version.pk:
            ModelVersion.objects.filter(pk=previous.version_id).update(stage=Stage.ARCHIVED)
        ModelAlias.objects.update_or_create(
            model=version.model, name=AliasName.PRODUCTION, defaults={"version": version, "weight": 100}
        )
        ModelAlias.objects.filter(model=version.model, name=AliasName.CANARY, version=version).delete()
    elif canary_weight is not None:
        if not 0 <= canary_weight <= 100:
            raise DomainError("canary_weight: must be 0-100.", fields={"canary_weight": ["Must be 0-100."]})
        ModelAlias.objects.update_or_create(
            model=version.model, name=AliasName.CANARY, defaults={"version": version, "weight": canary_weight}
        )
    if stage == Stage.ARCHIVED:
        ModelAlias.objects.filter(version=version).delete()
    previous_stage = version.stage
    version.stage = stage
    version.save(update_fields=["stage"])
    audit_record(
        organization=membership.organization_id,
        actor=membership.user,
        action="model.archived" if stage == Stage.ARCHIVED else "model.promoted",
        target=version,
        details={
            "model": version.model.name,
            "version": version.number,
            "from": previous_stage,
            "to": stage,
            "canary_weight": canary_weight,
        },
    )
    logger.info(
        "model.promoted",
        extra={
            "model": version.model.name,
            "version": version.number,
            "stage": stage,
            "organization_id": membership.organization_id,
        },
    )
    return version
