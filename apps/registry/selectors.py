"""Reads for the model registry, scoped to the caller's organization."""

import datetime

from django.db.models import QuerySet

from apps.accounts.models import Membership
from apps.core.errors import NotFound
from apps.registry.models import MLModel, ModelAliasEvent, ModelVersion


def model_list(*, membership: Membership) -> QuerySet[MLModel]:
    return MLModel.objects.filter(organization=membership.organization).prefetch_related("versions", "aliases")


def model_get(*, membership: Membership, name: str) -> MLModel:
    model = model_list(membership=membership).filter(name=name).first()
    if model is None:
        raise NotFound(f"No model named '{name}'.")
    return model


def version_get(*, membership: Membership, name: str, number: int) -> ModelVersion:
    version = (
        ModelVersion.objects.select_related("model")
        .filter(model__organization=membership.organization, model__name=name, number=number)
        .first()
    )
    if version is None:
        raise NotFound(f"No version {number} of model '{name}'.")
    return version


def alias_history(*, membership: Membership, name: str) -> QuerySet[ModelAliasEvent]:
    """Every move of the model's aliases, newest first."""
    model = model_get(membership=membership, name=name)
    return ModelAliasEvent.objects.filter(model=model).select_related("version", "previous_version", "actor")


def aliases_at(*, membership: Membership, name: str, at: datetime.datetime) -> dict[str, ModelAliasEvent]:
    """What each alias of the model pointed at, at time `at`: its latest move at or before it (removed: left out)."""
    latest: dict[str, ModelAliasEvent] = {}
    for event in alias_history(membership=membership, name=name).filter(created_at__lte=at):
        latest.setdefault(event.alias, event)
    return {alias: event for alias, event in latest.items() if event.version_id is not None}
