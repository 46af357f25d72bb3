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
from apps.accounts.permissions import (
    COMPILE_MODELS,
    OVERRIDE_PROMOTION,
    PERMISSIONS,
    PROMOTE_MODELS,
    ROLLBACK_MODELS,
    UPLOAD_MODELS,
    has_permission,
)
from apps.accounts.services import audit_record
from apps.core.artifact_storage import local_cache_put
from apps.core.errors import Conflict, DomainError, NotFound, PermissionDenied
from apps.registry.models import (
    AliasName,
    DevicePreference,
    MLModel,
    ModelAlias,
    ModelAliasEvent,
    ModelTask,
    ModelVersion,
    Stage,
)
from workers.onnx_models import ModelValidationError, inspect_model

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")

# The alias history's reason for a production alias set by the upload of a model's first version.
FIRST_VERSION_REASON = "first version"


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
    and no file behind. Every version can be named by number (`name@N`) once this commits.
    A new model's first version becomes its production version in the same transaction
    when the uploader may promote (decision 0037), so `name` alone works at once; later
    versions are drafts until promoted.
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
        with transaction.atomic():
            version, created = _register(
                organization=membership.organization,
                user=membership.user,
                name=name,
                staged=staged,
                info=info,
                task=task,
                description=description,
                device_preference=device_preference,
            )
            if created and version.number == 1 and has_permission(membership, PROMOTE_MODELS):
                # Nothing serves under the model's name yet, so there is no traffic for the gate to
                # protect (an upload has no failed report); the move is the ordinary, audited one.
                version = model_version_promote(
                    membership=membership, version=version, stage=Stage.PRODUCTION, reason=FIRST_VERSION_REASON
                )
            return version, created


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
def _register(
    *,
    organization,
    user,
    name,
    staged: Path,
    info,
    task,
    description,
    device_preference,
    stage: str = Stage.DRAFT,
    derived_from: ModelVersion | None = None,
    report: dict | None = None,
):
    model, _ = MLModel.objects.get_or_create(
        organization=organization, name=name, defaults={"task": task, "description": description}
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
        stage=stage,
        derived_from=derived_from,
        report=report or {},
        batching=info.batching,
        created_by=user,
    )
    storage_name = f"{organization.slug}/{name}/{number}-{info.sha256[:12]}.onnx"
    with staged.open("rb") as handle:
        version.file.save(storage_name, File(handle), save=False)
    stored = version.file.name
    # Text embedding in this process (search, personas) then needs no fetch of the model back.
    local_cache_put(staged, sha256=info.sha256, name=stored)
    try:
        version.save()
    except Exception:
        # No row, no file: the stored copy goes with the failed insert.
        version.file.storage.delete(stored)
        raise
    logger.info(
        "model.uploaded",
        extra={"model": name, "version": number, "sha256": info.sha256, "organization_id": organization.pk},
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
    elif selector in AliasName.values or ALIAS_NAME.match(selector):
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
            fields={"model": ["Use name, name@N, name@production, name@canary or name@<alias>."]},
        )
    if version is None:
        raise NotFound(_no_such_version(model, selector))
    return version


def _no_such_version(model: MLModel, selector: str) -> str:
    """What a reference that resolves to nothing should say: what exists, and how to get what was asked for."""
    versions = list(model.versions.order_by("-number")[:20])
    listed = ", ".join(f"{model.name}@{v.number} ({v.stage})" for v in versions) or "none"
    aliases = ", ".join(f"{a.name} -> {a.version.number}" for a in model.aliases.select_related("version")) or "none"
    exists = f"Its versions: {listed}. Its aliases: {aliases}."
    promote = f"POST /api/v1/models/{model.name}/versions/N/promote"
    if selector.isdigit():
        return f"Model '{model.name}' has no version {selector}. {exists}"
    if selector not in ("", AliasName.PRODUCTION, AliasName.CANARY):
        return f"Model '{model.name}' has no alias '{selector}'. {exists}"
    if selector == AliasName.CANARY:
        body = '{"stage": "staging", "canary_weight": W}'
        return f"Model '{model.name}' has no canary. {exists} Set one with {promote} {body}."
    # Actions first, the list last: API answers bound a message to 400 characters.
    roles = ", ".join(sorted(PERMISSIONS[PROMOTE_MODELS]))
    return (
        f"Model '{model.name}' has no production version. Name a version by number ({model.name}@N), or promote "
        f'one ({roles}): {promote} {{"stage": "production"}} or manage.py models promote {model.name}@N '
        f"--stage production. {exists}"
    )


@transaction.atomic
def model_version_promote(
    *,
    membership: Membership,
    version: ModelVersion,
    stage: str,
    canary_weight: int | None = None,
    override_reason: str = "",
    reason: str = "",
) -> ModelVersion:
    """Move a version to a stage, moving the aliases with it; every alias move is kept in the alias history.

    `production` moves the production alias to the version (the previous one is archived).
    A canary weight routes that share of the model's traffic to the version. Any version,
    archived included, can be promoted back: that is a rollback, for owners and admins,
    audited as `model.rolled_back`. The version holding the production alias cannot be
    moved to another stage (promote another version first): an alias never points at a
    version that is not production. A compiled version whose validation reports did not all
    pass serves no traffic (production, or a canary weight above 0) without a written
    `override_reason` from a role allowed to override; the override is audited.
    """
    if not has_permission(membership, PROMOTE_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not promote models.")
    _validate_choice(stage, Stage, "stage")
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if version.model.organization_id != membership.organization_id:
        raise NotFound("No such model.")
    model = MLModel.objects.select_for_update().get(pk=version.model_id)  # alias moves of a model, one at a time
    if canary_weight is not None and not 0 <= canary_weight <= 100:
        raise DomainError("canary_weight: must be 0-100.", fields={"canary_weight": ["Must be 0-100."]})
    previous_stage = version.stage
    rollback = previous_stage == Stage.ARCHIVED and stage != Stage.ARCHIVED
    if rollback and not has_permission(membership, ROLLBACK_MODELS):
        raise PermissionDenied(
            f"Role '{membership.role}' may not roll back: {version} is archived, and promoting it again is a "
            "rollback (owner or admin).",
            details={"action": ROLLBACK_MODELS},
        )
    production = ModelAlias.objects.filter(model=model, name=AliasName.PRODUCTION).first()
    if production is not None and production.version_id == version.pk and stage != Stage.PRODUCTION:
        raise Conflict(
            f"{version} is the production version; promote another version to production first (any version, "
            f"archived ones included, can be promoted back), then move {version} to {stage}."
        )
    reason = (reason or override_reason or "").strip()[:2000]
    override_reason = (override_reason or "").strip()
    serves_traffic = stage == Stage.PRODUCTION or (stage != Stage.ARCHIVED and (canary_weight or 0) > 0)
    overridden = serves_traffic and _check_promotion_gate(membership, version, override_reason)
    if stage == Stage.PRODUCTION:
        if production is not None and production.version_id != version.pk:
            ModelVersion.objects.filter(pk=production.version_id).update(stage=Stage.ARCHIVED)
        _alias_move(model, AliasName.PRODUCTION, version, 100, membership, reason)
        if ModelAlias.objects.filter(model=model, name=AliasName.CANARY, version=version).exists():
            _alias_move(model, AliasName.CANARY, None, None, membership, reason)
    elif stage in (Stage.ARCHIVED, Stage.DRAFT):
        for alias in ModelAlias.objects.filter(version=version):
            _alias_move(model, alias.name, None, None, membership, reason)
    elif canary_weight is not None:
        _alias_move(model, AliasName.CANARY, version, canary_weight, membership, reason)
    version.stage = stage
    version.save(update_fields=["stage"])
    action = {Stage.ARCHIVED: "model.archived"}.get(stage, "model.rolled_back" if rollback else "model.promoted")
    audit_record(
        organization=membership.organization_id,
        actor=membership,
        action=action,
        target=version,
        details={
            "model": model.name,
            "version": version.number,
            "from": previous_stage,
            "to": stage,
            "canary_weight": canary_weight,
            "reason": reason,
        },
    )
    if overridden:
        audit_record(
            organization=membership.organization_id,
            actor=membership,
            action="model.promotion_overridden",
            target=version,
            details={
                "model": model.name,
                "version": version.number,
                "stage": stage,
                "canary_weight": canary_weight,
                "reason": override_reason,
                "failures": version.report.get("failures", []),
                "target": version.report.get("target"),
            },
        )
    logger.info(
        "model.promoted",
        extra={
            "model": model.name,
            "version": version.number,
            "stage": stage,
            "rollback": rollback,
            "organization_id": membership.organization_id,
        },
    )
    return version


# Named aliases: lowercase, starting with a letter (so never a version number); production
# and canary follow the stages, and "history" is the alias history's URL.
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESERVED_ALIASES = {*AliasName.values, "history"}


@transaction.atomic
def model_alias_set(
    *,
    membership: Membership,
    version: ModelVersion,
    alias: str,
    reason: str = "",
    override_reason: str = "",
) -> ModelAlias:
    """Point the named alias `alias` of the version's model at `version` (jobs may then name `model@alias`).

    For roles that may promote; audited and kept in the alias history. An alias sends
    traffic, so the promotion gate applies (a failed report needs an override), and an
    archived version must be promoted back (a rollback) before an alias may point at it.
    """
    if not has_permission(membership, PROMOTE_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not move model aliases.")
    _check_alias_name(alias)
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if version.model.organization_id != membership.organization_id:
        raise NotFound("No such model.")
    model = MLModel.objects.select_for_update().get(pk=version.model_id)
    if version.stage == Stage.ARCHIVED:
        raise Conflict(f"{version} is archived: promote it back first (a rollback), then point an alias at it.")
    override_reason = (override_reason or "").strip()
    reason = (reason or override_reason or "").strip()[:2000]
    overridden = _check_promotion_gate(membership, version, override_reason)
    _alias_move(model, alias, version, 100, membership, reason)
    audit_record(
        organization=membership.organization_id,
        actor=membership,
        action="model.alias_moved",
        target=version,
        details={"model": model.name, "alias": alias, "version": version.number, "reason": reason},
    )
    if overridden:
        audit_record(
            organization=membership.organization_id,
            actor=membership,
            action="model.promotion_overridden",
            target=version,
            details={
                "model": model.name,
                "version": version.number,
                "alias": alias,
                "reason": override_reason,
                "failures": version.report.get("failures", []),
                "target": version.report.get("target"),
            },
        )
    return ModelAlias.objects.select_related("version").get(model=model, name=alias)


@transaction.atomic
def model_alias_remove(*, membership: Membership, model: MLModel, alias: str, reason: str = "") -> None:
    """Remove the named alias `alias` (no-op when it does not exist); audited and kept in the alias history."""
    if not has_permission(membership, PROMOTE_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not move model aliases.")
    _check_alias_name(alias)
    if model.organization_id != membership.organization_id:
        raise NotFound("No such model.")
    model = MLModel.objects.select_for_update().get(pk=model.pk)
    current = ModelAlias.objects.filter(model=model, name=alias).select_related("version").first()
    if current is None:
        return
    _alias_move(model, alias, None, None, membership, (reason or "").strip()[:2000])
    audit_record(
        organization=membership.organization_id,
        actor=membership,
        action="model.alias_moved",
        target=current.version,
        details={"model": model.name, "alias": alias, "version": None, "previous_version": current.version.number},
    )


def _check_alias_name(alias: str) -> None:
    if alias in RESERVED_ALIASES:
        raise DomainError(
            f"alias: '{alias}' is reserved; production and canary follow the stages (POST .../promote).",
            fields={"alias": [f"'{alias}' is reserved."]},
        )
    if not isinstance(alias, str) or not ALIAS_NAME.match(alias):
        raise DomainError(
            "alias: lowercase letters, digits, '-' and '_', starting with a letter (at most 32).",
            fields={"alias": ["Lowercase letters, digits, '-' and '_', starting with a letter (at most 32)."]},
        )


def _alias_move(
    model: MLModel,
    name: str,
    version: ModelVersion | None,
    weight: int | None,
    membership: Membership,
    reason: str,
) -> None:
    """Point alias `name` at `version` (None: remove it) and record the move; a no-op records nothing."""
    current = ModelAlias.objects.filter(model=model, name=name).first()
    if version is None:
        if current is None:
            return
        previous_id = current.version_id
        current.delete()
    else:
        if current is not None and current.version_id == version.pk and current.weight == weight:
            return
        previous_id = current.version_id if current is not None else None
        ModelAlias.objects.update_or_create(model=model, name=name, defaults={"version": version, "weight": weight})
    ModelAliasEvent.objects.create(
        model=model,
        alias=name,
        version=version,
        previous_version_id=previous_id,
        weight=weight,
        actor=membership.user,
        reason=reason,
    )


def _check_promotion_gate(membership: Membership, version: ModelVersion, override_reason: str) -> bool:
    """Whether promoting `version` to production overrides a failed report; refuses when it may not."""
    if version.derived_from_id is None or version.report.get("passed") is True:
        return False
    failures = "; ".join(version.report.get("failures") or ["the version has no passing validation report"])
    if not override_reason:
        raise Conflict(
            f"{version.model.name}@{version.number} did not pass validation ({failures}); it serves no traffic "
            "(production or a canary weight) unless you give override_reason.",
            fields={"override_reason": ["Required to send traffic to a version whose validation report did not pass."]},
            details={"failures": version.report.get("failures", [])},
        )
    if not has_permission(membership, OVERRIDE_PROMOTION):
        raise PermissionDenied(
            f"Role '{membership.role}' may not override a failed validation report.",
            details={"action": OVERRIDE_PROMOTION},
        )
    if len(override_reason) > 2000:
        raise DomainError("override_reason: at most 2000 characters.", fields={"override_reason": ["At most 2000."]})
    return True


# --- compilation --------------------------------------------------------------------------------


def model_version_compile(
    *,
    membership: Membership,
    version: ModelVersion,
    target: str,
    tolerance: dict | None = None,
    sample_inputs: dict | None = None,
    sample_rows: int | None = None,
    seed: int | None = None,
    latency_runs: int | None = None,
    priority: int = 5,
    idempotency_key: str | None = None,
):
    """Submit a `compile` job for `version`; its result is a new `staging` version derived from it.

    Fields refused by the kind's parameters come back without the `params.` prefix: here
    they are the caller's own fields.
    """
    from apps.jobs.services import job_submit

    if not has_permission(membership, COMPILE_MODELS):
        raise PermissionDenied(f"Role '{membership.role}' may not compile models.", details={"action": COMPILE_MODELS})
    if version.model.organization_id != membership.organization_id:
        raise NotFound("No such model.")
    optional = {
        "tolerance": tolerance,
        "sample_inputs": sample_inputs,
        "sample_rows": sample_rows,
        "seed": seed,
        "latency_runs": latency_runs,
    }
    params = {
        "model": f"{version.model.name}@{version.number}",
        "target": target,
        **{key: value for key, value in optional.items() if value is not None},
    }
    try:
        job, _ = job_submit(
            membership=membership, kind="compile", params=params, priority=priority, idempotency_key=idempotency_key
        )
    except DomainError as exc:
        if not exc.fields:
            raise
        fields = {name.removeprefix("params."): errors for name, errors in exc.fields.items()}
        raise type(exc)(exc.message.removeprefix("params."), fields=fields, details=exc.details) from exc
    return job


def model_version_register_compiled(
    *, source: ModelVersion, path: Path, report: dict, target: str, job_id, attempt: int
) -> tuple[ModelVersion, bool] | None:
    """Register a compile job's output as a `staging` version derived from `source`.

    Runs the upload's own validation, and inserts only while `attempt` still holds the
    job (fenced like every worker write): None when it does not. Returns (version,
    created); identical bytes already registered come back with created=False. Nothing is
    left behind when it refuses: no row, no stored file.
    """
    from apps.jobs.models import ACTIVE_STATUSES, Job

    info = inspect_model(path, max_bytes=settings.REGISTRY_MAX_MODEL_BYTES)  # ModelValidationError fails the job
    created_version = None
    try:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update(of=("self",))
                .select_related("owner")
                .filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES)
                .first()
            )
            if job is None:
                return None
            model = source.model
            version, created = _register(
                organization=model.organization,
                user=job.owner,
                name=model.name,
                staged=path,
                info=info,
                task=model.task,
                description=model.description,
                device_preference=COMPILED_DEVICE_PREFERENCE[target],
                stage=Stage.STAGING,
                derived_from=source,
                report=_with_report({}, {**report, "job_id": str(job_id), "source": f"{model.name}@{source.number}"}),
            )
            created_version = version if created else None
            if not created:
                # The same bytes from another compile: this job's report joins the version's.
                version = ModelVersion.objects.select_for_update().get(pk=version.pk)
                version.report = _with_report(
                    version.report, {**report, "job_id": str(job_id), "source": f"{model.name}@{source.number}"}
                )
                version.save(update_fields=["report"])
    except Exception:
        # The insert rolled back after the file was stored: the file goes too.
        if created_version is not None:
            created_version.file.storage.delete(created_version.file.name)
        raise
    return version, created


def _with_report(current: dict, new: dict) -> dict:
    """A compiled version's report once `new` (one compile job's) joins it: every job's report is kept.

    Identical compiled bytes are one version, however many compile jobs produced them, so
    its promotability comes from all their reports, whatever their order: it passed only if
    each of them passed. The top level keeps the first report's figures for display; a
    retried attempt of a job replaces that job's entry.
    """
    earlier = current.get("reports", [current] if current else [])
    reports = [r for r in earlier if r.get("job_id") != new.get("job_id")] + [new]
    failures = sorted({failure for r in reports for failure in r.get("failures", [])})
    return {
        **reports[0],
        "passed": all(r.get("passed") is True for r in reports),
        "failures": failures,
        "reports": reports,
    }


COMPILED_DEVICE_PREFERENCE = {
    "cpu-optimized": DevicePreference.CPU,  # fused CPU kernels (FusedGemm, ...)
    "cpu-int8": DevicePreference.CPU,
    "gpu-fp16": DevicePreference.GPU,
}
