"""Reads for the model registry, scoped to the caller's organization."""

from django.db.models import QuerySet

from apps.accounts.models import Membership
from apps.core.errors import NotFound
from apps.registry.models import MLModel, ModelVersion


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
