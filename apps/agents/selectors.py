"""Reads for agents and memories, scoped to the caller's organization, including nearest-neighbour search."""

from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from pgvector.django import CosineDistance

from apps.accounts.models import Membership
from apps.accounts.permissions import READ_AGENTS, READ_SCENARIOS, has_permission, require
from apps.agents.embeddings import text_embed
from apps.agents.models import Agent, Memory, Scenario, half_precision
from apps.agents.services import vector_clean
from apps.core.errors import Conflict, DomainError, NotFound, PermissionDenied

MAX_K = 100


def _require_read(membership: Membership) -> None:
    if not has_permission(membership, READ_AGENTS):
        raise PermissionDenied(f"Role '{membership.role}' may not read agents.")


def agent_list(*, membership: Membership) -> QuerySet[Agent]:
    _require_read(membership)
    return Agent.objects.filter(organization=membership.organization)


def agent_get(*, membership: Membership, agent_id) -> Agent:
    """The agent, or 404 whether it does not exist or belongs to another organization."""
    try:
        agent_id = int(agent_id)
    except (TypeError, ValueError):
        raise NotFound("No such agent.") from None
    agent = agent_list(membership=membership).filter(pk=agent_id).first()
    if agent is None:
        raise NotFound("No such agent.")
    return agent


def memory_list(*, membership: Membership, agent: Agent) -> QuerySet[Memory]:
    _require_read(membership)
    return Memory.objects.filter(agent=agent, agent__organization=membership.organization)


def nearest_first(queryset: QuerySet, vector: list[float]) -> QuerySet:
    """The rows by cosine distance to `vector`: ordered as the HNSW index orders them (its halfvec
    expression), each annotated with its exact float32 `distance`."""
    return queryset.annotate(distance=CosineDistance("embedding", vector)).order_by(
        CosineDistance(half_precision(), vector)
    )


def _nearest(queryset: QuerySet, vector: list[float], k: int, ef_search: int | None) -> list:
    """The k rows nearest by cosine distance, each with `.distance`, through the HNSW index.

    pgvector 0.8 iterative scans: when filters drop candidates, the index scan goes on
    past ef_search until k rows pass them (or hnsw.max_scan_tuples is reached), instead
    of returning fewer rows. `relaxed_order` may return them slightly out of order, so
    they are sorted again here. SET LOCAL needs the transaction and ends with it.
    """
    ef_search = ef_search or settings.AGENTS_SEARCH_EF_SEARCH
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            [str(max(ef_search, k))],
        )
        rows = list(nearest_first(queryset, vector)[:k])
    rows.sort(key=lambda row: row.distance)
    return rows


def _search_args(k: int, created_after: datetime | None, created_before: datetime | None) -> None:
    if not 1 <= k <= MAX_K:
        raise DomainError(f"k: from 1 to {MAX_K}.", fields={"k": [f"Must be from 1 to {MAX_K}."]})
    if created_after and created_before and created_after >= created_before:
        raise DomainError(
            "created_before: must be later than created_after.",
            fields={"created_before": ["Must be later than created_after."]},
        )


def memory_search(
    *,
    membership: Membership,
    agent: Agent,
    vector: list[float] | None = None,
    text: str | None = None,
    k: int = 10,
    kind: str | None = None,
    min_importance: float | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    ef_search: int | None = None,
) -> list[Memory]:
    """The agent's memories nearest to a vector, or to a text embedded by the production embedding model.

    Filters apply inside the index scan (iterative), so they do not cost recall.
    """
    _search_args(k, created_after, created_before)
    if text is not None:
        if not text.strip():
            raise DomainError("q: empty text; nothing to search for.", fields={"q": ["Empty text."]})
        vectors, _ = text_embed(organization=membership.organization, texts=[text.strip()])
        vector = vectors[0].tolist()
    elif vector is None:
        raise DomainError("vector: required.", fields={"vector": ["Give a vector or a text."]})
    else:
        vector = vector_clean(vector, field="vector")
    memories = memory_list(membership=membership, agent=agent)
    if kind:
        memories = memories.filter(kind=kind)
    if min_importance is not None:
        memories = memories.filter(importance__gte=min_importance)
    if created_after is not None:
        memories = memories.filter(created_at__gte=created_after)
    if created_before is not None:
        memories = memories.filter(created_at__lt=created_before)
    return _nearest(memories.defer("embedding"), vector, k, ef_search)


def agent_similar(*, membership: Membership, agent: Agent, k: int = 10, kind: str | None = None) -> list[Agent]:
    """Agents of the same organization nearest to this one's embedding (itself excluded)."""
    _search_args(k, None, None)
    if agent.embedding is None:
        raise Conflict(f"Agent '{agent.name}' has no embedding: give it a vector or a persona.")
    agents = agent_list(membership=membership).exclude(pk=agent.pk).filter(embedding__isnull=False)
    if kind:
        agents = agents.filter(kind=kind)
    return _nearest(agents.defer("embedding"), [float(x) for x in agent.embedding], k, None)


def scenario_list(*, membership: Membership) -> QuerySet[Scenario]:
    require(membership, READ_SCENARIOS, "read scenarios")
    return Scenario.objects.filter(organization=membership.organization)


def scenario_get(*, membership: Membership, scenario_id) -> Scenario:
    """The scenario, or 404 whether it does not exist or belongs to another organization."""
    try:
        scenario_id = int(scenario_id)
    except (TypeError, ValueError):
        raise NotFound("No such scenario.") from None
    scenario = scenario_list(membership=membership).filter(pk=scenario_id).first()
    if scenario is None:
        raise NotFound("No such scenario.")
    return scenario


def scenario_runs(*, membership: Membership, scenario: Scenario) -> QuerySet:
    """The scenario's runs and sweeps (not a sweep's children), newest first."""
    from apps.jobs.selectors import job_list

    return job_list(membership=membership).filter(
        kind__in=("simulation", "simulation_sweep"), params__scenario_id=scenario.pk, parent__isnull=True
    )
