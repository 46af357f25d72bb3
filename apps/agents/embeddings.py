"""Which model embeds an organization's text (its production model of task `embedding`), and embedding with it."""

import numpy as np
from django.conf import settings

from apps.accounts.models import Organization
from apps.core.artifact_storage import local_copy
from apps.core.errors import Conflict
from apps.registry.models import AliasName, ModelTask, ModelVersion
from workers.embedding import EmbeddingModelUnusable, embed_texts, embedding_dimension

SHIPPED_MODEL_NAME = "minilm-l6-v2"


class NoEmbeddingModel(Conflict):
    """The organization has no production model of task `embedding`; run `manage.py agents embedder install`."""

    code = "no_embedding_model"


def embedding_model_get(*, organization: Organization) -> ModelVersion:
    """The version behind the production alias of the organization's one embedding model."""
    versions = list(
        ModelVersion.objects.select_related("model").filter(
            aliases__name=AliasName.PRODUCTION,
            model__task=ModelTask.EMBEDDING,
            model__organization=organization,
        )
    )
    if not versions:
        raise NoEmbeddingModel()
    if len(versions) > 1:
        # Two production embedding models would put memories in two vector spaces
        # that cannot be compared; refuse rather than pick one silently.
        names = ", ".join(sorted(str(v) for v in versions))
        raise NoEmbeddingModel(f"Several embedding models are in production ({names}); archive all but one.")
    version = versions[0]
    try:
        dimension = embedding_dimension(version.signature)
    except EmbeddingModelUnusable as exc:
        raise NoEmbeddingModel(f"{version} cannot embed text: {exc.message}.") from exc
    if dimension != settings.AGENTS_EMBEDDING_DIM:
        raise NoEmbeddingModel(
            f"{version} gives {dimension}-dimensional vectors; the vector columns hold {settings.AGENTS_EMBEDDING_DIM}."
        )
    return version


def embed_with(version: ModelVersion, texts: list[str], **kwargs) -> np.ndarray:
    # Through this host's cache of stored files (fetched once by sha256, reused by every later call).
    model_path = local_copy(version.file.name, sha256=version.sha256)
    return embed_texts(texts, model_path=model_path, sha256=version.sha256, **kwargs)


def text_embed(*, organization: Organization, texts: list[str]) -> tuple[np.ndarray, str]:
    """Embed a few texts in this process (a search query, a persona); returns (vectors, "name@N")."""
    version = embedding_model_get(organization=organization)
    return embed_with(version, texts), str(version)
