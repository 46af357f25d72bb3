"""Agents, memories and vector search against real PostgreSQL + pgvector (HNSW, iterative scans)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection, transaction

from apps.agents.bench import exact_top_k, synthetic_vectors
from apps.agents.models import Agent, Memory, MemoryKind
from apps.agents.services import embedding_model_install, memory_import_batch
from apps.jobs.models import Job
from workers.memory_file import MemoryRow

pytestmark = pytest.mark.django_db(transaction=True)

DIM = 384
KINDS = MemoryKind.values
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def unit(rng, n=1):
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def seeded(member):
    """An agent with 3,000 clustered memories, a second agent and another organization's agent nearby."""
    membership, client = member("developer")
    _, stranger_client = member("developer")
    stranger = stranger_client.post("/api/v1/agents/", {"name": "spy", "kind": "test"}, format="json").json()
    agent = client.post("/api/v1/agents/", {"name": "ada", "kind": "research"}, format="json").json()
    other = client.post("/api/v1/agents/", {"name": "bo", "kind": "code"}, format="json").json()
    vectors, _ = synthetic_vectors(3030, DIM, clusters=10, seed=11)
    vectors, queries = vectors[:3000], vectors[3000:]
    rng = np.random.default_rng(5)
    kinds = rng.integers(0, len(KINDS), size=len(vectors))
    importance = rng.random(len(vectors)).round(3)
    days = rng.integers(0, 365, size=len(vectors))
    Memory.objects.bulk_create(
        Memory(
            agent_id=agent["id"],
            text=f"memory {i}",
            embedding=vectors[i],
            kind=KINDS[kinds[i]],
            importance=float(importance[i]),
            created_at=EPOCH + timedelta(days=int(days[i])),
        )
        for i in range(len(vectors))
    )
    # Exact copies of the queries under other agents: a search leaking across agents or
    # organizations would rank them first.
    for owner in (other["id"], stranger["id"]):
        Memory.objects.bulk_create(
            Memory(agent_id=owner, text="decoy", embedding=q, kind=KINDS[0], importance=1.0) for q in queries
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_memory")
    return {
        "client": client,
        "membership": membership,
        "agent": agent["id"],
        "vectors": vectors,
        "queries": queries,
        "kinds": kinds,
        "importance": importance,
        "days": days,
        "ids": np.array(Memory.objects.filter(agent_id=agent["id"]).order_by("text").values_list("id", flat=True)),
        "texts": {f"memory {i}": i for i in range(len(vectors))},
    }


def search(client, agent_id, vector, **filters):
    response = client.post(
        f"/api/v1/agents/{agent_id}/memories/search", {"vector": vector.tolist(), **filters}, format="json"
    )
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def recall(seeded, mask=None, **filters) -> float:
    truth = exact_top_k(seeded["vectors"], seeded["queries"], 10, mask)
    scores = []
    for query, expected in zip(seeded["queries"], truth, strict=True):
        results = search(seeded["client"], seeded["agent"], query, k=10, **filters)
        found = {seeded["texts"][r["text"]] for r in results}
        assert len(results) == 10
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
        scores.append(len(found & expected) / 10)
    return float(np.mean(scores))


def test_vector_search_matches_an_exact_numpy_ranking(seeded):
    assert recall(seeded) >= 0.95


def test_filters_are_respected_and_keep_recall(seeded):
    after, before = EPOCH + timedelta(days=60), EPOCH + timedelta(days=300)
    mask = (
        (seeded["kinds"] == KINDS.index("fact"))
        & (seeded["importance"] >= 0.3)
        & (seeded["days"] >= 60)
        & (seeded["days"] < 300)
    )
    filters = {
        "kind": "fact",
        "min_importance": 0.3,
        "created_after": after.isoformat(),
        "created_before": before.isoformat(),
    }
    # ~10% of the rows pass: with a plain ef_search=100 index scan most queries would come back short.
    assert 0.05 < mask.mean() < 0.2
    assert recall(seeded, mask, **filters) >= 0.95
    for query in seeded["queries"][:5]:
        for hit in search(seeded["client"], seeded["agent"], query, k=10, **filters):
            memory = Memory.objects.get(pk=hit["id"])
            assert memory.kind == "fact" and memory.importance >= 0.3 and after <= memory.created_at < before


def test_search_goes_through_the_hnsw_index_with_iterative_scans(seeded):
    from apps.agents import selectors
    from apps.agents.models import Agent

    agent = Agent.objects.get(pk=seeded["agent"])
    queryset = selectors.memory_list(membership=seeded["membership"], agent=agent).filter(kind="fact")
    query = selectors.nearest_first(queryset, seeded["queries"][0].tolist())[:10]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        plan = query.explain()
    assert "memory_embedding_hnsw" in plan, plan


def test_wrong_dimension_and_bad_vectors_are_refused_with_the_reason(seeded):
    client, url = seeded["client"], f"/api/v1/agents/{seeded['agent']}/memories/search"
    cases = [
        ([0.1, 0.2, 0.3], "Expected 384 numbers, got 3."),
        ([0.0] * DIM, "Must not be all zeros (cosine distance is undefined)."),
        (["a"] * DIM, "Must contain numbers only."),
        ("nope", None),
    ]
    for vector, reason in cases:
        response = client.post(url, {"vector": vector}, format="json")
        assert response.status_code == 400, vector
        body = response.json()
        assert body["code"] == "invalid" and "vector" in body["fields"]
        if reason:
            assert body["fields"]["vector"] == [reason]
    response = client.post(url, {"vector": seeded["queries"][0].tolist(), "k": 0}, format="json")
    assert response.status_code == 400 and "k" in response.json()["fields"]
    response = client.post(
        url,
        {
            "vector": seeded["queries"][0].tolist(),
            "created_after": "2026-03-01T00:00:00Z",
            "created_before": "2026-02-01",
        },
        format="json",
    )
    assert response.status_code == 400 and "created_before" in response.json()["fields"]


def test_empty_text_is_refused_with_the_reason(member):
    _, client = member("developer")
    agent = client.post("/api/v1/agents/", {"name": "ada", "kind": "research"}, format="json").json()
    for query in ("", "   "):
        response = client.get(f"/api/v1/agents/{agent['id']}/memories/search", {"q": query})
        assert response.status_code == 400
        assert response.json()["fields"] == {"q": ["Empty text: nothing to search for."]}
    response = client.get(f"/api/v1/agents/{agent['id']}/memories/search")
    assert response.status_code == 400 and response.json()["fields"] == {"q": ["Give the text as q."]}


def test_another_organizations_agents_are_never_returned(seeded, member):
    _, stranger = member("developer")
    agent = seeded["agent"]
    for path in ("", "memories/", "similar", "memories/search?q=hello"):
        assert stranger.get(f"/api/v1/agents/{agent}/{path}").status_code == 404, path
    response = stranger.post(
        f"/api/v1/agents/{agent}/memories/search", {"vector": seeded["queries"][0].tolist()}, format="json"
    )
    assert response.status_code == 404
    assert all(a["name"] != "ada" for a in stranger.get("/api/v1/agents/").json()["results"])


def test_similar_agents_rank_by_cosine_and_stay_in_the_organization(member):
    _, client = member("developer")
    _, stranger = member("developer")
    rng = np.random.default_rng(3)
    base = unit(rng)[0]
    vectors = [base + scale * unit(rng)[0] for scale in (0.3, 0.8, 1.5, 3.0)]
    ids = []
    for i, vector in enumerate([base, *vectors]):
        body = {"name": f"a{i}", "kind": "partner", "embedding": vector.tolist()}
        response = client.post("/api/v1/agents/", body, format="json")
        assert response.status_code == 201, response.json()
        ids.append(response.json()["id"])
    # Identical to the first agent, but in another organization.
    stranger.post("/api/v1/agents/", {"name": "twin", "kind": "partner", "embedding": base.tolist()}, format="json")
    results = client.get(f"/api/v1/agents/{ids[0]}/similar", {"k": 3}).json()["results"]
    assert [r["name"] for r in results] == ["a1", "a2", "a3"]
    expected = [1 - float(base @ v / np.linalg.norm(base) / np.linalg.norm(v)) for v in vectors[:3]]
    np.testing.assert_allclose([r["distance"] for r in results], expected, atol=1e-5)
    bare = client.post("/api/v1/agents/", {"name": "bare", "kind": "test"}, format="json").json()
    response = client.get(f"/api/v1/agents/{bare['id']}/similar")
    assert response.status_code == 409 and "no embedding" in response.json()["detail"]


def test_agent_input_is_validated_field_by_field(member):
    _, client = member("developer")
    cases = [
        ({"name": "a", "kind": "wizard"}, "kind"),
        ({"name": "a", "kind": "code", "traits": {"openness": 1.5}}, "traits.openness"),
        ({"name": "a", "kind": "code", "traits": {"Open Ness": 0.5}}, "traits.Open Ness"),
        ({"name": "a", "kind": "code", "traits": [0.5]}, "traits"),
        ({"name": "a", "kind": "code", "config": "x"}, "config"),
        ({"name": "a", "kind": "code", "embedding": [1, 2]}, "embedding"),
        ({"name": "", "kind": "code"}, "name"),
    ]
    for body, field in cases:
        response = client.post("/api/v1/agents/", body, format="json")
        assert response.status_code == 400, body
        assert field in response.json()["fields"], (body, response.json())
    big_five = {"openness": 0.9, "conscientiousness": 0.7, "extraversion": 0.2, "agreeableness": 0.6, "neuroticism": 0}
    response = client.post("/api/v1/agents/", {"name": "ok", "kind": "user-proxy", "traits": big_five}, format="json")
    assert response.status_code == 201 and response.json()["traits"]["neuroticism"] == 0.0
    duplicate = client.post("/api/v1/agents/", {"name": "ok", "kind": "code"}, format="json")
    assert duplicate.status_code == 400 and "name" in duplicate.json()["fields"]


def test_a_viewer_may_search_but_not_create(member, seeded):
    from apps.agents.models import Agent

    _, viewer = member("viewer", organization=Agent.objects.get(pk=seeded["agent"]).organization)
    assert viewer.post("/api/v1/agents/", {"name": "v", "kind": "test"}, format="json").status_code == 403
    results = search(viewer, seeded["agent"], seeded["queries"][0], k=3)
    assert len(results) == 3


def test_text_search_embeds_the_query_with_the_production_embedding_model(member):
    from apps.accounts.models import Role

    membership, client = member("operator")
    agent = client.post(
        "/api/v1/agents/",
        {"name": "ada", "kind": "research", "persona": "Reads papers about databases."},
        format="json",
    ).json()
    assert agent["has_embedding"] is False  # no embedding model yet: the persona stays unembedded
    response = client.post(f"/api/v1/agents/{agent['id']}/memories/", {"text": "I met Bob."}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "no_embedding_model"
    assert client.get(f"/api/v1/agents/{agent['id']}/memories/search", {"q": "hi"}).json()["code"] == (
        "no_embedding_model"
    )

    version, created = embedding_model_install(membership=membership)
    assert created and str(version) == "minilm-l6-v2@1" and version.stage == "production"
    assert embedding_model_install(membership=membership) == (version, False)
    texts = [
        "The database migration failed at midnight.",
        "I had coffee with Bob at the corner cafe.",
        "Alice prefers green tea to coffee.",
        "The quarterly report is due next Friday.",
    ]
    for text in texts:
        response = client.post(f"/api/v1/agents/{agent['id']}/memories/", {"text": text}, format="json")
        assert response.status_code == 201 and response.json()["embedding_source"] == "minilm-l6-v2@1"
    results = client.get(
        f"/api/v1/agents/{agent['id']}/memories/search", {"q": "the schema upgrade broke overnight", "k": 2}
    ).json()["results"]
    assert results[0]["text"] == texts[0]
    assert membership.role == Role.OPERATOR


def test_an_import_batch_is_fenced_by_the_attempt_and_skips_lines_already_imported(member):
    membership, client = member("developer")
    agent = client.post("/api/v1/agents/", {"name": "ada", "kind": "research"}, format="json").json()
    job = Job.objects.create(
        organization=membership.organization, kind="memory_import", queue="cpu", status="running", attempt=2
    )
    rng = np.random.default_rng(1)
    rows = [MemoryRow(line, f"m{line}", "fact", 0.5, None, None) for line in (1, 2, 3)]
    vectors = list(unit(rng, 3))
    args = {"job_id": job.id, "agent_id": agent["id"], "rows": rows, "vectors": vectors, "sources": ["client"] * 3}
    assert memory_import_batch(attempt=1, **args) is False
    assert Memory.objects.count() == 0
    assert memory_import_batch(attempt=2, **args) is True
    assert memory_import_batch(attempt=2, **args) is True
    assert sorted(Memory.objects.values_list("import_line", flat=True)) == [1, 2, 3]


def test_cli_creates_searches_and_refuses_with_exit_code_2(member):
    from django.core.management.base import CommandError

    membership, _ = member("operator")
    options = {"as_user": membership.user.username}
    call_command("agents", "embedder", "install", **options)
    call_command("agents", "create", "ada", kind="research", persona="A database researcher.", **options)
    call_command("agents", "remember", "ada", "Postgres crashed during the migration.", **options)
    call_command("agents", "remember", "ada", "Lunch was pasta.", kind="plan", **options)
    from io import StringIO

    out = StringIO()
    call_command("agents", "search", "ada", "database outage", k=1, stdout=out, **options)
    assert "Postgres crashed" in out.getvalue()
    with pytest.raises(CommandError) as refused:
        call_command("agents", "search", "ada", "  ", **options)
    assert refused.value.returncode == 2 and "q:" in str(refused.value)
    with pytest.raises(CommandError) as missing:
        call_command("agents", "show", "nobody", **options)
    assert missing.value.returncode == 2
    assert Agent.objects.get(name="ada").embedding_source == "minilm-l6-v2@1"
