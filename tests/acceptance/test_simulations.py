"""Simulations end to end: REST -> real cpu worker (agents and memories from pgvector) -> results and artifacts;
sweeps: fan-out to cpu children, aggregation on a real control worker, one child failing, cancel."""

import time

import numpy as np
import pytest

from apps.agents.models import Agent
from apps.agents.services import agent_create, memory_create, scenario_create
from apps.jobs.models import Job, JobEvent, JobStatus
from workers import simulation as engine

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FAST_CONTRACT = {
    "JOBS_LEASE_SECONDS": "3",
    "JOBS_HEARTBEAT_SECONDS": "0.5",
    "JOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2",
}
SPEC = {
    "rounds": 40,
    "topology": {"type": "all_pairs"},
    "events": [
        {"round": 15, "type": "set_parameter", "parameter": "cooperation_bias", "value": -6},
        {"round": 25, "type": "remove_agent", "agent": "agent-3"},
    ],
}
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


def wait_for(predicate, timeout=90, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def wait_terminal(job_id, timeout=90) -> Job:
    ended = Job.objects.filter(pk=job_id, status__in=("succeeded", "failed", "cancelled"))
    return wait_for(ended.first, timeout, f"job {job_id}")


@pytest.fixture
def village(member):
    """Eight agents with seeded traits and memories in two camps (their centroids point two ways)."""
    membership, client = member("developer")
    rng = np.random.default_rng(11)
    camps = rng.standard_normal((2, 384))
    vectors = {}
    for index in range(8):
        traits = dict(zip(TRAITS, np.round(rng.uniform(0, 1, 5), 3).tolist(), strict=True))
        agent = agent_create(membership=membership, name=f"agent-{index}", kind="research", traits=traits)
        vectors[agent.pk] = []
        for _ in range(3):
            vector = camps[index % 2] + 0.5 * rng.standard_normal(384)
            memory_create(membership=membership, agent=agent, text=f"memory of {index}", embedding=vector.tolist())
            vectors[agent.pk].append(vector)
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    return membership, client, scenario, vectors


def _run(client, scenario, **body):
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def _arrays(client, job_id) -> dict:
    artifacts = {a["name"]: a for a in client.get(f"/api/v1/jobs/{job_id}/artifacts").json()["results"]}
    content = client.get(f"/api/v1/jobs/{job_id}/artifacts/{artifacts['results.npz']['id']}/download")
    import io

    with np.load(io.BytesIO(b"".join(content.streaming_content)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_a_run_plays_the_engine_on_the_agents_traits_and_memories(start_worker, village):
    _, client, scenario, vectors = village
    start_worker("cpu", env=FAST_CONTRACT)
    job = wait_terminal(_run(client, scenario, seed=42))
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0 and job.worker_host.startswith("cpu@")
    result = job.result
    assert result["seed"] == 42 and result["rounds"] == 40 and result["agents"] == 8
    assert [(e["round"], e["type"]) for e in result["events_fired"]] == [(15, "set_parameter"), (25, "remove_agent")]
    assert len(result["strongest_pairs"]) == 5 and result["transcript"]

    # The same input through the engine directly: traits from the rows, memory similarity from
    # numpy centroids of the vectors the agents remember (the worker asked pgvector for them).
    ids = sorted(vectors)
    centroids = np.array([np.mean(vectors[pk], axis=0) for pk in ids])
    units = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    similarity = np.clip(units @ units.T, -1, 1)
    np.fill_diagonal(similarity, 0.0)
    agents = list(Agent.objects.filter(pk__in=ids).order_by("pk"))
    direct = engine.run_simulation(
        engine.SimulationInput(
            agent_names=[agent.name for agent in agents],
            traits=engine.traits_matrix([agent.traits for agent in agents]),
            memory_similarity=similarity,
            spec=job.params["spec"],
            seed=42,
        )
    )
    arrays = _arrays(client, job.pk)
    for name in engine.METRICS:
        # pgvector averages in float4: the worker's similarities match numpy's to ~1e-7.
        np.testing.assert_allclose(arrays[f"metric_{name}"], direct.metrics[name], atol=1e-5)
    np.testing.assert_allclose(arrays["compatibility"], direct.compatibility, atol=1e-5)
    assert arrays["agent_ids"].tolist() == ids
    # The event at round 15 makes everyone defect from then on; agent-3 meets nobody after round 25.
    cooperation = arrays["metric_cooperation_rate"]
    assert cooperation[:14].mean() > 0.5 > cooperation[15:].mean()

    artifacts = {a["name"]: a for a in client.get(f"/api/v1/jobs/{job.pk}/artifacts").json()["results"]}
    assert set(artifacts) == {"results.npz", "chart.png"}
    chart = client.get(f"/api/v1/jobs/{job.pk}/artifacts/{artifacts['chart.png']['id']}/download")
    assert b"".join(chart.streaming_content).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_same_seed_gives_the_same_results_and_another_seed_does_not(start_worker, village):
    _, client, scenario, _ = village
    start_worker("cpu", env=FAST_CONTRACT, concurrency=2)
    first, second, other = (_run(client, scenario, seed=seed) for seed in (7, 7, 8))
    jobs = [wait_terminal(job_id) for job_id in (first, second, other)]
    assert [job.status for job in jobs] == ["succeeded"] * 3

    def comparable(result):
        return {key: value for key, value in result.items() if key != "agent_steps_per_s"}

    assert comparable(jobs[0].result) == comparable(jobs[1].result)
    a, b, c = (_arrays(client, job.pk) for job in jobs)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(a["affinity"], c["affinity"])
    assert comparable(jobs[0].result) != comparable(jobs[2].result)


def test_a_sweep_of_12_runs_aggregates_them_on_control_and_reports_a_failed_child(start_worker, village):
    _, client, scenario, _ = village
    start_worker("control", env=FAST_CONTRACT)
    grid = {"cooperation_bias": [-1.0, 1.0], "learning_rate": [0.05, 0.1, 0.3]}
    response = client.post(
        f"/api/v1/scenarios/{scenario.pk}/sweeps", {"grid": grid, "replications": 2, "seed": 100}, format="json"
    )
    assert response.status_code == 201, response.json()
    parent_id = response.json()["id"]
    # Fanned out: 12 children, and the parent waits running with no lease, holding no worker.
    wait_for(
        lambda: Job.objects.filter(pk=parent_id, status="running", lease_expires_at__isnull=True).exists(),
        message="the parent to wait for its children",
    )
    assert Job.objects.filter(parent_id=parent_id, status="queued").count() == 12

    # Fault injection: one child's agents are gone by the time it runs.
    doomed = Job.objects.filter(parent_id=parent_id).order_by("created_at")[4]
    Job.objects.filter(pk=doomed.pk).update(params={**doomed.params, "agent_ids": [*doomed.params["agent_ids"], 10**9]})
    start_worker("cpu", env=FAST_CONTRACT, concurrency=2)

    parent = wait_terminal(parent_id, timeout=180)
    assert parent.status == "succeeded", parent.error
    assert parent.progress == 1.0
    result = parent.result
    assert result["children"] == {"total": 12, "succeeded": 11, "failed": 1, "cancelled": 0}
    [failed] = result["failed_children"]
    assert failed["job_id"] == str(doomed.pk) and failed["error"]["code"] == "agents_missing"

    # The table against the children's own results.
    children = list(Job.objects.filter(parent_id=parent_id))
    assert all(child.queue == "cpu" for child in children)
    assert all(child.worker_host.startswith("cpu@") for child in children if child.status == "succeeded")
    assert {child.params["seed"] for child in children} == {100, 101}

    def key(overrides):
        return tuple(sorted(overrides.items()))

    rows = {key(row["overrides"]): row for row in result["table"]}
    assert len(rows) == 6
    for point in {key(child.params["overrides"]) for child in children}:
        ran = [c for c in children if c.status == "succeeded" and key(c.params["overrides"]) == point]
        finals = [c.result["final"] for c in ran]
        row = rows[point]
        assert row["replications"] == len(finals) == (1 if point == key(doomed.params["overrides"]) else 2)
        for metric in ("mean_affinity", "cohesion", "conflicts", "cooperation_rate"):
            values = np.array([final[metric] for final in finals])
            assert row["mean"][metric] == pytest.approx(values.mean(), abs=1e-6)
            assert row["std"][metric] == pytest.approx(values.std(), abs=1e-6)
    finished = JobEvent.objects.get(job_id=parent_id, to_status="succeeded")
    assert finished.worker.startswith("control@")  # the aggregation ran on control
    names = {a["name"] for a in client.get(f"/api/v1/jobs/{parent_id}/artifacts").json()["results"]}
    assert names == {"sweep.png"}


def test_cancelling_a_sweep_cancels_its_children(start_worker, member):
    membership, client = member("developer")
    rng = np.random.default_rng(3)
    organization = membership.organization
    Agent.objects.bulk_create(
        Agent(organization=organization, name=f"a{i}", kind="test", embedding=rng.standard_normal(384).tolist())
        for i in range(300)
    )
    scenario = scenario_create(membership=membership, name="long", spec={"rounds": 5000})
    start_worker("control", env=FAST_CONTRACT)
    start_worker("cpu", env=FAST_CONTRACT)
    sweep = {"grid": {"learning_rate": [0.1, 0.2]}, "replications": 2}
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/sweeps", sweep, format="json")
    parent_id = response.json()["id"]
    wait_for(lambda: Job.objects.filter(parent_id=parent_id, status="running").exists(), message="a running child")
    assert client.post(f"/api/v1/jobs/{parent_id}/cancel").status_code == 202
    started = time.monotonic()
    parent = wait_terminal(parent_id, timeout=60)
    assert parent.status == "cancelled"
    assert time.monotonic() - started < 15
    assert set(Job.objects.filter(parent_id=parent_id).values_list("status", flat=True)) == {JobStatus.CANCELLED}
