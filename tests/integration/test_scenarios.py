"""Scenarios over REST and the checks a simulation run or sweep gets at submit: 400 with the field, nothing left."""

import pytest

from apps.agents.models import Scenario
from apps.agents.services import agent_create, scenario_create
from apps.jobs.models import Job

pytestmark = pytest.mark.django_db

VECTOR = [1.0] + [0.0] * 383
SPEC = {
    "rounds": 20,
    "topology": {"type": "small_world", "degree": 2, "rewire": 0.1},
    "parameters": {"learning_rate": 0.2},
    "events": [
        {"round": 5, "type": "set_parameter", "parameter": "noise", "value": 0.3},
        {"round": 8, "type": "remove_agent", "agent": "cleo"},
    ],
}


@pytest.fixture
def world(member):
    membership, client = member("developer")
    agents = [
        agent_create(membership=membership, name=name, kind="research", embedding=VECTOR, traits={"openness": 0.7})
        for name in ("ada", "bo", "cleo", "dev")
    ]
    return membership, client, agents


def test_a_scenario_is_saved_with_its_spec_normalised(world):
    _, client, _ = world
    response = client.post("/api/v1/scenarios/", {"name": "village", "spec": SPEC}, format="json")
    assert response.status_code == 201, response.json()
    spec = response.json()["spec"]
    assert spec["rounds"] == 20
    assert spec["parameters"]["learning_rate"] == 0.2
    assert set(spec["parameters"]) >= {"noise", "temperature", "cooperation_bias"}  # defaults filled in
    assert [event["round"] for event in spec["events"]] == [5, 8]
    assert client.get(f"/api/v1/scenarios/{response.json()['id']}/").json()["spec"] == spec


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.rounds"),
        ({"rounds": 0}, "spec.rounds"),
        ({"rounds": "ten"}, "spec.rounds"),
        ({"rounds": True}, "spec.rounds"),
        ({"rounds": 10, "topology": {"type": "ring"}}, "spec.topology.type"),
        ({"rounds": 10, "topology": {"type": "small_world", "degree": 3}}, "spec.topology.degree"),
        ({"rounds": 10, "parameters": {"charisma": 1}}, "spec.parameters.charisma"),
        ({"rounds": 10, "parameters": {"learning_rate": 2}}, "spec.parameters.learning_rate"),
        ({"rounds": 10, "events": [{"round": 11, "type": "shock", "delta": 0.5}]}, "spec.events[0].round"),
        ({"rounds": 10, "events": [{"round": 2, "type": "explode"}]}, "spec.events[0].type"),
    ],
)
def test_an_invalid_spec_is_a_400_naming_the_field_and_saves_nothing(world, spec, field):
    _, client, _ = world
    response = client.post("/api/v1/scenarios/", {"name": "bad", "spec": spec}, format="json")
    assert response.status_code == 400, response.json()
    body = response.json()
    assert field in body["fields"], body
    assert body["detail"].startswith(field)
    assert not Scenario.objects.filter(name="bad").exists()


def test_several_spec_errors_are_reported_together(world):
    _, client, _ = world
    spec = {"rounds": 10, "topology": {"type": "ring"}, "parameters": {"noise": 9}}
    fields = client.post("/api/v1/scenarios/", {"name": "bad", "spec": spec}, format="json").json()["fields"]
    assert {"spec.topology.type", "spec.parameters.noise"} <= set(fields)


def test_update_validates_and_names_must_be_unique(world):
    membership, client, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    scenario_create(membership=membership, name="town", spec={"rounds": 3})
    response = client.patch(f"/api/v1/scenarios/{scenario.pk}/", {"spec": {"rounds": -1}}, format="json")
    assert response.status_code == 400 and "spec.rounds" in response.json()["fields"]
    response = client.patch(f"/api/v1/scenarios/{scenario.pk}/", {"name": "town"}, format="json")
    assert response.status_code == 400 and "name" in response.json()["fields"]
    response = client.patch(f"/api/v1/scenarios/{scenario.pk}/", {"spec": {"rounds": 7}}, format="json")
    assert response.status_code == 200 and response.json()["spec"]["rounds"] == 7


def test_another_organizations_scenario_is_404(world, member):
    membership, _, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    _, stranger = member("owner")
    assert stranger.get(f"/api/v1/scenarios/{scenario.pk}/").status_code == 404
    assert stranger.post(f"/api/v1/scenarios/{scenario.pk}/runs", {}, format="json").status_code == 404
    assert stranger.get("/api/v1/scenarios/").json()["results"] == []


def test_a_run_records_the_spec_the_agents_and_a_seed(world):
    membership, client, agents = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", {"overrides": {"temperature": 2}}, format="json")
    assert response.status_code == 201, response.json()
    params = response.json()["params"]
    assert response.json()["kind"] == "simulation" and response.json()["queue"] == "cpu"
    assert params["agent_ids"] == sorted(agent.pk for agent in agents)
    assert params["spec"] == scenario.spec and params["scenario_name"] == "village"
    assert isinstance(params["seed"], int)
    assert params["overrides"] == {"temperature": 2.0}
    listed = client.get(f"/api/v1/scenarios/{scenario.pk}/runs").json()["results"]
    assert [job["id"] for job in listed] == [response.json()["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent_ids": [999999, 999998]}, "agent_ids"),
        ({"overrides": {"charisma": 1}}, "overrides.charisma"),
        ({"overrides": {"noise": 0.9}}, "overrides.noise"),
        ({"seed": -1}, "seed"),
    ],
)
def test_a_bad_run_is_a_400_with_the_field_and_no_job(world, body, field):
    membership, client, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", body, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["fields"], response.json()
    assert not Job.objects.exists()


def test_an_event_naming_an_agent_outside_the_run_is_a_400(world):
    membership, client, agents = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    without_cleo = [agent.pk for agent in agents if agent.name != "cleo"]
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", {"agent_ids": without_cleo}, format="json")
    assert response.status_code == 400
    assert "scenario.events[1].agent" in response.json()["fields"], response.json()
    assert not Job.objects.exists()


def test_a_topology_that_does_not_fit_the_agents_is_a_400(world):
    membership, client, _ = world
    spec = {"rounds": 5, "topology": {"type": "random", "degree": 8}}
    scenario = scenario_create(membership=membership, name="crowd", spec=spec)
    response = client.post(f"/api/v1/scenarios/{scenario.pk}/runs", {}, format="json")
    assert response.status_code == 400 and "scenario.topology.degree" in response.json()["fields"]


def test_a_sweep_counts_its_children_and_checks_its_grid(world, settings):
    membership, client, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    url = f"/api/v1/scenarios/{scenario.pk}/sweeps"
    response = client.post(url, {"grid": {"learning_rate": [0.1, 0.2, 0.3]}, "replications": 4}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["kind"] == "simulation_sweep" and response.json()["queue"] == "control"
    assert response.json()["params"]["children"] == 12

    bad = client.post(url, {"grid": {"charisma": [1]}}, format="json").json()
    assert "grid.charisma" in bad["fields"]
    bad = client.post(url, {"grid": {"noise": [0.1, 0.9]}}, format="json").json()
    assert "grid.noise" in bad["fields"]
    settings.SIMULATION_SWEEP_MAX_CHILDREN = 10
    bad = client.post(url, {"grid": {"learning_rate": [0.1, 0.2, 0.3]}, "replications": 4}, format="json").json()
    assert "grid" in bad["fields"] and "12 runs" in bad["fields"]["grid"][0]
    assert Job.objects.count() == 1


def test_a_viewer_may_read_scenarios_but_not_change_or_run_them(world, member):
    membership, _, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    _, viewer = member("viewer", organization=membership.organization)
    assert viewer.get(f"/api/v1/scenarios/{scenario.pk}/").status_code == 200
    assert viewer.patch(f"/api/v1/scenarios/{scenario.pk}/", {"description": "x"}, format="json").status_code == 403
    assert viewer.post(f"/api/v1/scenarios/{scenario.pk}/runs", {}, format="json").status_code == 403


def test_a_run_retried_with_its_idempotency_key_is_the_same_run_and_a_different_one_is_422(world):
    membership, client, _ = world
    scenario = scenario_create(membership=membership, name="village", spec=SPEC)
    path = f"/api/v1/scenarios/{scenario.pk}/runs"
    first = client.post(path, {"overrides": {"temperature": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    # No seed given: the one drawn at submit must not make the retry look like another request.
    again = client.post(path, {"overrides": {"temperature": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post(path, {"overrides": {"temperature": 3}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1")
    assert other.status_code == 422 and other.json()["code"] == "idempotency_conflict"
