"""The simulation engine: seeded and deterministic, events on time, the plain-Python reference agrees, specs checked."""

import json
import struct

import numpy as np
import pytest

from workers import simulation as sim
from workers.simulation import SimulationInput, SpecError


@pytest.fixture(autouse=True)
def _empty_cache():
    """Stands in for tests/conftest.py's Django cache reset: the engine has no cache, and these tests run
    without Django (pytest -p no:django)."""
    return


def make_input(count=12, spec=None, *, seed=7, memory=True, overrides=None) -> SimulationInput:
    rng = np.random.default_rng(seed + 1000)
    names = [f"agent{index}" for index in range(count)]
    traits = rng.random((count, len(sim.TRAITS)))
    if memory:
        centroids = rng.standard_normal((count, 8))
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        similarity = centroids @ centroids.T
    else:
        similarity = np.zeros((count, count))
    spec = sim.validate_spec(spec or {"rounds": 30})
    return SimulationInput(names, traits, similarity, spec, seed, overrides or {})


EVENTS_SPEC = {
    "rounds": 30,
    "events": [
        {"round": 5, "type": "shock", "agents": ["agent1", "agent2"], "delta": -0.7},
        {"round": 8, "type": "set_trait", "agent": "agent3", "trait": "openness", "value": 0.9},
        {"round": 10, "type": "set_parameter", "parameter": "trait_weight", "value": 3},
        {"round": 12, "type": "remove_agent", "agent": "agent4"},
        {"round": 15, "type": "shock", "delta": 0.5},
        {"round": 20, "type": "set_parameter", "parameter": "cooperation_bias", "value": -5},
        {"round": 22, "type": "set_parameter", "parameter": "conflict_threshold", "value": 0},
        {"round": 25, "type": "set_parameter", "parameter": "temperature", "value": 0.05},
    ],
}


# ---------------------------------------------------------------------------------------------
# Determinism and the reference implementation


def test_same_input_and_seed_give_bit_identical_results():
    first = sim.run_simulation(make_input(spec=EVENTS_SPEC))
    second = sim.run_simulation(make_input(spec=EVENTS_SPEC))

    assert np.array_equal(first.affinity, second.affinity)
    assert np.array_equal(first.compatibility, second.compatibility)
    assert np.array_equal(first.interactions, second.interactions)
    for name in sim.METRICS:
        assert np.array_equal(first.metrics[name], second.metrics[name])
    assert first.transcript == second.transcript
    assert first.events_fired == second.events_fired


def test_a_different_seed_gives_different_results():
    first = sim.run_simulation(make_input(seed=1))
    second = sim.run_simulation(make_input(seed=2))

    assert not np.array_equal(first.affinity, second.affinity)
    assert not np.array_equal(first.interactions, second.interactions)


@pytest.mark.parametrize(
    "spec",
    [
        {"rounds": 30},
        {"rounds": 30, "topology": {"type": "random", "degree": 3}},
        {"rounds": 30, "topology": {"type": "small_world", "degree": 4, "rewire": 0.3}},
        EVENTS_SPEC,
        {**EVENTS_SPEC, "topology": {"type": "small_world", "degree": 2, "rewire": 0.5}},
    ],
    ids=["all_pairs", "random", "small_world", "events", "small_world_events"],
)
def test_reference_implementation_gives_the_same_metrics(spec):
    inp = make_input(12, spec)

    result = sim.run_simulation(inp)
    reference = sim.run_reference(inp)

    assert set(reference) == set(sim.METRICS)
    for name in sim.METRICS:
        np.testing.assert_allclose(result.metrics[name], reference[name], rtol=0, atol=1e-9, err_msg=name)
    assert result.metrics["interactions"].sum() > 0


def test_reference_agrees_without_memory_and_with_overrides():
    inp = make_input(9, {"rounds": 25}, memory=False, overrides={"learning_rate": 0.4, "noise": 0.3})

    result = sim.run_simulation(inp)
    reference = sim.run_reference(inp)

    for name in sim.METRICS:
        np.testing.assert_allclose(result.metrics[name], reference[name], rtol=0, atol=1e-9, err_msg=name)


def test_topology_is_built_the_same_way_by_both_implementations():
    for topology in (
        {"type": "random", "degree": 3},
        {"type": "small_world", "degree": 4, "rewire": 0.4},
        {"type": "all_pairs"},
    ):
        adjacency = sim._build_adjacency(topology, 15, np.random.Generator(np.random.PCG64(3)))
        neighbours = sim._reference_neighbours(topology, 15, np.random.Generator(np.random.PCG64(3)))
        assert [list(np.flatnonzero(row)) for row in adjacency] == neighbours


# ---------------------------------------------------------------------------------------------
# Events


def test_set_parameter_fires_exactly_at_its_round():
    plain = sim.run_simulation(make_input(20, {"rounds": 40}))
    spec = {
        "rounds": 40,
        "events": [{"round": 20, "type": "set_parameter", "parameter": "cooperation_bias", "value": -10}],
    }
    changed = sim.run_simulation(make_input(20, spec))

    cooperation = changed.metrics["cooperation_rate"]
    # Nothing differs before round 20; from round 20 on, hardly anybody cooperates.
    assert np.array_equal(cooperation[:19], plain.metrics["cooperation_rate"][:19])
    assert cooperation[:19].mean() > 0.6
    assert cooperation[19:].max() < 0.2
    assert changed.events_fired == [
        {"round": 20, "type": "set_parameter", "parameter": "cooperation_bias", "value": -10.0, "previous": 1.0}
    ]


def test_a_removed_agent_has_no_interactions_from_its_round_on():
    removal_round = 15
    spec = {"rounds": 40, "events": [{"round": removal_round, "type": "remove_agent", "agent": "agent3"}]}
    full = sim.run_simulation(make_input(10, spec))
    before_removal = sim.run_simulation(make_input(10, {"rounds": removal_round - 1}))

    assert before_removal.interactions[3].sum() > 0
    assert np.array_equal(full.interactions[3], before_removal.interactions[3])
    assert np.array_equal(full.interactions[:, 3], before_removal.interactions[:, 3])
    assert full.interactions.sum() > before_removal.interactions.sum()
    assert full.events_fired == [{"round": removal_round, "type": "remove_agent", "agent": "agent3"}]


def test_shock_shifts_the_named_agents_affinities_both_ways_and_clips():
    # Learning rate 0: only the shocks move affinity.
    spec = {
        "rounds": 6,
        "parameters": {"learning_rate": 0},
        "events": [
            {"round": 3, "type": "shock", "agents": ["agent0"], "delta": -0.5},
            {"round": 5, "type": "shock", "agents": ["agent4"], "delta": 2},
        ],
    }
    result = sim.run_simulation(make_input(5, spec))

    expected = np.zeros((5, 5))
    expected[0, :] = expected[:, 0] = -0.5
    expected[4, :] = expected[:, 4] = 1.0
    expected[0, 4] = expected[4, 0] = 1.0  # -0.5 + 2, clipped
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(result.affinity, expected)
    assert [event["round"] for event in result.events_fired] == [3, 5]
    assert result.events_fired[0] == {"round": 3, "type": "shock", "agents": ["agent0"], "delta": -0.5}
    assert result.metrics["mean_affinity"][1] == 0.0 and result.metrics["mean_affinity"][2] < 0.0


def test_shock_without_agents_shifts_everyone():
    spec = {"rounds": 2, "parameters": {"learning_rate": 0}, "events": [{"round": 2, "type": "shock", "delta": 0.25}]}
    result = sim.run_simulation(make_input(4, spec))

    assert result.metrics["mean_affinity"].tolist() == [0.0, 0.25]
    assert result.events_fired == [{"round": 2, "type": "shock", "agents": "all", "delta": 0.25}]


def test_set_trait_records_the_previous_value():
    inp = make_input(
        6,
        {
            "rounds": 5,
            "events": [{"round": 2, "type": "set_trait", "agent": "agent1", "trait": "extraversion", "value": 0}],
        },
    )
    previous = float(inp.traits[1, sim.TRAITS.index("extraversion")])

    result = sim.run_simulation(inp)

    assert result.events_fired == [
        {
            "round": 2,
            "type": "set_trait",
            "agent": "agent1",
            "trait": "extraversion",
            "value": 0.0,
            "previous": previous,
        }
    ]
    assert inp.traits[1, 2] == previous  # the caller's array is not changed


# ---------------------------------------------------------------------------------------------
# Progress, cancellation, topologies, shapes


def test_progress_is_reported_after_every_round():
    reports = []
    sim.run_simulation(
        make_input(4, {"rounds": 3}), report_progress=lambda fraction, message: reports.append((fraction, message))
    )

    assert reports == [(1 / 3, "round 1/3"), (2 / 3, "round 2/3"), (1.0, "round 3/3")]


def test_cancellation_stops_the_run_between_rounds():
    class Cancelled(Exception):
        pass

    calls = []
    reports = []

    def raise_if_cancelled():
        calls.append(1)
        if len(calls) > 5:
            raise Cancelled

    with pytest.raises(Cancelled):
        sim.run_simulation(
            make_input(6, {"rounds": 50}),
            report_progress=lambda fraction, message: reports.append(message),
            raise_if_cancelled=raise_if_cancelled,
        )
    assert len(calls) == 6
    assert reports == [f"round {number}/50" for number in range(1, 6)]


@pytest.mark.parametrize(
    "topology", [{"type": "random", "degree": 2}, {"type": "small_world", "degree": 2, "rewire": 0.2}]
)
def test_sparse_topologies_only_let_neighbours_interact(topology):
    inp = make_input(30, {"rounds": 60, "topology": topology})
    adjacency = sim._build_adjacency(
        sim.validate_spec({"rounds": 1, "topology": topology})["topology"],
        30,
        np.random.Generator(np.random.PCG64(inp.seed)),
    )

    result = sim.run_simulation(inp)

    assert result.interactions.sum() > 0
    assert not result.interactions[~adjacency].any()
    assert adjacency.sum() < 30 * 29 / 2


def test_small_world_without_rewiring_is_a_ring_lattice():
    topology = {"type": "small_world", "degree": 4, "rewire": 0.0}
    adjacency = sim._build_adjacency(topology, 10, np.random.Generator(np.random.PCG64(0)))

    for agent in range(10):
        assert set(np.flatnonzero(adjacency[agent])) == {(agent + offset) % 10 for offset in (-2, -1, 1, 2)}


def test_random_topology_gives_everyone_at_least_degree_neighbours():
    adjacency = sim._build_adjacency({"type": "random", "degree": 3}, 25, np.random.Generator(np.random.PCG64(0)))

    assert (adjacency.sum(axis=1) >= 3).all()
    assert np.array_equal(adjacency, adjacency.T) and not adjacency.diagonal().any()


def test_two_agents_without_memory_similarity():
    result = sim.run_simulation(make_input(2, {"rounds": 20}, memory=False))

    assert result.affinity.shape == (2, 2) and result.interactions.shape == (2, 2)
    assert result.interactions[0, 1] == result.interactions[1, 0] > 0
    assert np.all(np.abs(result.affinity) <= 1.0)
    assert all(series.shape == (20,) and np.isfinite(series).all() for series in result.metrics.values())


def test_result_shapes_and_invariants():
    result = sim.run_simulation(make_input(15, {"rounds": 40}))

    assert result.rounds_run == 40
    assert set(result.metrics) == set(sim.METRICS)
    assert result.interactions.dtype == np.int64
    assert np.array_equal(result.interactions, result.interactions.T)
    assert result.interactions.sum() == 2 * result.metrics["interactions"].sum()
    assert np.array_equal(result.compatibility, result.compatibility.T)
    assert np.abs(result.compatibility).max() <= 1.0 and np.abs(result.affinity).max() <= 1.0
    assert not result.affinity.diagonal().any() and not result.compatibility.diagonal().any()
    assert (result.metrics["conflicts"] <= result.metrics["interactions"]).all()
    assert ((result.metrics["cooperation_rate"] >= 0) & (result.metrics["cooperation_rate"] <= 1)).all()


def test_shape_mismatches_are_value_errors_that_say_what_is_wrong():
    inp = make_input(5)
    inp.memory_similarity = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"memory_similarity has shape \(4, 4\), expected \(5, 5\)"):
        sim.run_simulation(inp)

    inp = make_input(5)
    inp.traits = inp.traits[:3]
    with pytest.raises(ValueError, match=r"traits has shape \(3, 5\), expected \(5, 5\)"):
        sim.run_reference(inp)


def test_traits_matrix_fills_missing_traits_and_clips():
    matrix = sim.traits_matrix([{"openness": 0.9, "neuroticism": 1.7, "humour": 0.1}, {}, {"extraversion": -1}])

    assert matrix.dtype == np.float64 and matrix.shape == (3, 5)
    np.testing.assert_array_equal(matrix[0], [0.9, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(matrix[1], [0.5] * 5)
    np.testing.assert_array_equal(matrix[2], [0.5, 0.5, 0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="agent 0: trait openness must be a number"):
        sim.traits_matrix([{"openness": "high"}])


# ---------------------------------------------------------------------------------------------
# Spec validation


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({}, "rounds"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 5001}, "rounds"),
        ({"rounds": "10"}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"rounds": 10.0}, "rounds"),
        ({"rounds": 10, "colour": "red"}, "colour"),
        ({"rounds": 10, "topology": "all_pairs"}, "topology"),
        ({"rounds": 10, "topology": {"type": "grid"}}, "topology.type"),
        ({"rounds": 10, "topology": {"degree": 3}}, "topology.type"),
        ({"rounds": 10, "topology": {"type": "small_world", "degree": 3}}, "topology.degree"),
        ({"rounds": 10, "topology": {"type": "random", "degree": 0}}, "topology.degree"),
        ({"rounds": 10, "topology": {"type": "random", "degree": 2, "rewire": 0.1}}, "topology.rewire"),
        ({"rounds": 10, "topology": {"type": "small_world", "rewire": 1.5}}, "topology.rewire"),
        ({"rounds": 10, "parameters": {"speed": 1}}, "parameters.speed"),
        ({"rounds": 10, "parameters": {"learning_rate": 2}}, "parameters.learning_rate"),
        ({"rounds": 10, "parameters": {"learning_rate": True}}, "parameters.learning_rate"),
        ({"rounds": 10, "parameters": {"noise": "0.1"}}, "parameters.noise"),
        ({"rounds": 10, "parameters": {"noise": float("nan")}}, "parameters.noise"),
        ({"rounds": 10, "events": {}}, "events"),
        ({"rounds": 10, "events": [{"round": 1, "type": "shock", "delta": 0.1}] * 201}, "events"),
        ({"rounds": 10, "events": ["shock"]}, "events[0]"),
        ({"rounds": 10, "events": [{"round": 11, "type": "shock", "delta": 0.1}]}, "events[0].round"),
        ({"rounds": 10, "events": [{"type": "shock", "delta": 0.1}]}, "events[0].round"),
        ({"rounds": 10, "events": [{"round": 2, "type": "explode"}]}, "events[0].type"),
        (
            {"rounds": 10, "events": [{"round": 2, "type": "set_parameter", "parameter": "speed", "value": 1}]},
            "events[0].parameter",
        ),
        (
            {"rounds": 10, "events": [{"round": 2, "type": "set_parameter", "parameter": "noise", "value": 0.9}]},
            "events[0].value",
        ),
        (
            {"rounds": 10, "events": [{"round": 2, "type": "set_trait", "agent": "a", "trait": "wit", "value": 0.5}]},
            "events[0].trait",
        ),
        (
            {
                "rounds": 10,
                "events": [{"round": 2, "type": "set_trait", "agent": "a", "trait": "openness", "value": 2}],
            },
            "events[0].value",
        ),
        (
            {"rounds": 10, "events": [{"round": 2, "type": "set_trait", "trait": "openness", "value": 1}]},
            "events[0].agent",
        ),
        ({"rounds": 10, "events": [{"round": 2, "type": "shock", "delta": 3}]}, "events[0].delta"),
        ({"rounds": 10, "events": [{"round": 2, "type": "shock", "delta": "1"}]}, "events[0].delta"),
        ({"rounds": 10, "events": [{"round": 2, "type": "shock", "delta": 1, "agents": []}]}, "events[0].agents"),
        ({"rounds": 10, "events": [{"round": 2, "type": "shock", "delta": 1, "agents": [3]}]}, "events[0].agents[0]"),
        ({"rounds": 10, "events": [{"round": 2, "type": "remove_agent", "agent": "a", "why": "x"}]}, "events[0].why"),
    ],
)
def test_bad_specs_name_the_field(spec, path):
    with pytest.raises(SpecError) as caught:
        sim.validate_spec(spec)

    assert path in caught.value.errors, caught.value.errors
    assert isinstance(caught.value, ValueError)


def test_not_a_spec_at_all():
    with pytest.raises(SpecError) as caught:
        sim.validate_spec([1, 2])
    assert list(caught.value.errors) == ["spec"]


def test_every_error_is_reported_together_and_the_message_is_the_first():
    spec = {
        "rounds": 0,
        "topology": {"type": "small_world", "degree": 3},
        "parameters": {"noise": 9, "speed": 1},
        "events": [{"round": 1, "type": "explode"}, {"round": 1, "type": "shock", "delta": 5}],
    }
    with pytest.raises(SpecError) as caught:
        sim.validate_spec(spec)

    assert set(caught.value.errors) == {
        "rounds",
        "topology.degree",
        "parameters.noise",
        "parameters.speed",
        "events[0].type",
        "events[1].delta",
    }
    assert str(caught.value) == f"rounds: {caught.value.errors['rounds'][0]}"
    assert str(caught.value).startswith("rounds: must be between 1 and 5000")


def test_validate_spec_fills_defaults_and_sorts_events_stably():
    spec = {
        "rounds": 10,
        "topology": {"type": "small_world"},
        "parameters": {"noise": 0.2},
        "events": [
            {"round": 7, "type": "shock", "delta": 1},
            {"round": 2, "type": "remove_agent", "agent": "b"},
            {"round": 7, "type": "shock", "delta": -1},
            {"round": 2, "type": "set_trait", "agent": "a", "trait": "openness", "value": 1},
        ],
    }
    original = json.loads(json.dumps(spec))

    normalised = sim.validate_spec(spec)

    assert spec == original  # not modified
    assert normalised["topology"] == {"type": "small_world", "degree": 4, "rewire": 0.1}
    assert normalised["parameters"] == {
        **{name: parameter.default for name, parameter in sim.PARAMETERS.items()},
        "noise": 0.2,
    }
    assert [(event["round"], event["type"]) for event in normalised["events"]] == [
        (2, "remove_agent"),
        (2, "set_trait"),
        (7, "shock"),
        (7, "shock"),
    ]
    assert [event.get("delta") for event in normalised["events"][2:]] == [1.0, -1.0]
    assert sim.validate_spec(normalised) == normalised
    assert sim.validate_spec({"rounds": 3})["topology"] == {"type": "all_pairs"}
    json.dumps(normalised)


def test_parameter_table_is_consistent():
    assert {"learning_rate", "temperature", "memory_weight", "trait_weight", "cooperation_bias"} <= set(sim.PARAMETERS)
    assert {"betrayal_penalty", "conflict_threshold", "noise"} <= set(sim.PARAMETERS)
    for parameter in sim.PARAMETERS.values():
        assert parameter.minimum <= parameter.default <= parameter.maximum
        assert parameter.help


def test_check_spec_agents_needs_named_agents_and_a_topology_that_fits():
    names = ["ann", "bob", "cat"]
    sim.check_spec_agents({"rounds": 5, "events": [{"round": 1, "type": "remove_agent", "agent": "bob"}]}, names)

    spec = {
        "rounds": 5,
        "topology": {"type": "random", "degree": 3},
        "events": [
            {"round": 1, "type": "remove_agent", "agent": "bob"},
            {"round": 2, "type": "set_trait", "agent": "dan", "trait": "openness", "value": 1},
            {"round": 3, "type": "shock", "agents": ["ann", "eve"], "delta": 1},
        ],
    }
    with pytest.raises(SpecError) as caught:
        sim.check_spec_agents(spec, names)

    assert set(caught.value.errors) == {"topology.degree", "events[1].agent", "events[2].agents"}
    assert "'eve'" in caught.value.errors["events[2].agents"][0]
    with pytest.raises(SpecError) as caught:
        sim.check_spec_agents({"rounds": 5, "topology": {"type": "small_world", "degree": 4}}, names)
    assert list(caught.value.errors) == ["topology.degree"]
    with pytest.raises(SpecError) as caught:
        sim.check_spec_agents({"rounds": 5}, ["solo"])
    assert list(caught.value.errors) == ["agents"]


def test_run_checks_the_spec_against_its_agents():
    inp = make_input(4)
    inp.spec = {"rounds": 5, "events": [{"round": 1, "type": "remove_agent", "agent": "nobody"}]}
    with pytest.raises(SpecError, match=r"^events\[0\]\.agent: "):
        sim.run_simulation(inp)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"speed": 1}, "overrides.speed"),
        ({"learning_rate": 5}, "overrides.learning_rate"),
        ({"noise": True}, "overrides.noise"),
        ({"temperature": "hot"}, "overrides.temperature"),
    ],
)
def test_bad_overrides_name_the_parameter(overrides, path):
    with pytest.raises(SpecError) as caught:
        sim.run_simulation(make_input(4, overrides=overrides))
    assert list(caught.value.errors) == [path]


def test_overrides_replace_the_spec_parameters():
    spec = {"rounds": 20, "parameters": {"cooperation_bias": 3}}
    friendly = sim.run_simulation(make_input(10, spec))
    hostile = sim.run_simulation(make_input(10, spec, overrides={"cooperation_bias": -8}))

    assert friendly.metrics["cooperation_rate"].mean() > 0.8
    assert hostile.metrics["cooperation_rate"].mean() < 0.2


# ---------------------------------------------------------------------------------------------
# Transcript, summary, sweeps


def test_transcript_is_short_ordered_and_readable():
    result = sim.run_simulation(make_input(12, {"rounds": 120}))
    names = set(make_input(12).agent_names)

    assert len(result.transcript) == sim.TRANSCRIPT_LENGTH
    rounds = [entry["round"] for entry in result.transcript]
    assert rounds == sorted(rounds) and len(set(rounds)) == len(rounds)
    for entry in result.transcript:
        assert set(entry) == {"round", "a", "b", "actions", "affinity_before", "affinity_after", "text"}
        assert entry["a"] in names and entry["b"] in names and entry["a"] != entry["b"]
        assert set(entry["actions"]) == {"a", "b"}
        assert set(entry["actions"].values()) <= {"cooperate", "defect"}
        assert entry["text"].startswith(f"Round {entry['round']}: ") and entry["a"] in entry["text"]
        assert -1.0 <= entry["affinity_after"] <= 1.0


def test_summarize_is_json_with_ranked_pairs():
    inp = make_input(8, EVENTS_SPEC)
    result = sim.run_simulation(inp)

    summary = sim.summarize(result, inp.agent_names, top=3)

    assert json.loads(json.dumps(summary)) == summary
    assert summary["agents"] == 8 and summary["rounds"] == 30
    assert set(summary["final"]) == set(summary["mean"]) == set(sim.METRICS)
    assert summary["final"]["cohesion"] == round(float(result.metrics["cohesion"][-1]), 6)
    assert summary["mean"]["interactions"] == round(float(result.metrics["interactions"].mean()), 6)
    strongest = [pair["compatibility"] for pair in summary["strongest_pairs"]]
    weakest = [pair["compatibility"] for pair in summary["weakest_pairs"]]
    assert len(strongest) == len(weakest) == 3
    assert strongest == sorted(strongest, reverse=True) and weakest == sorted(weakest)
    upper = result.compatibility[np.triu_indices(8, 1)]
    assert strongest[0] == round(float(upper.max()), 6) and weakest[0] == round(float(upper.min()), 6)
    pair = summary["strongest_pairs"][0]
    a, b = inp.agent_names.index(pair["a"]), inp.agent_names.index(pair["b"])
    assert a < b and pair["interactions"] == int(result.interactions[a, b])
    assert [event["round"] for event in summary["events_fired"]] == [5, 8, 10, 12, 15, 20, 22, 25]
    assert len(summary["transcript"]) == len(result.transcript)


def test_aggregate_sweep_groups_replications_by_grid_point():
    points = [
        {"overrides": {"learning_rate": 0.3}, "replication": 0, "final": {"cohesion": 0.5, "conflicts": 2}},
        {"overrides": {"learning_rate": 0.1}, "replication": 0, "final": {"cohesion": 0.2, "conflicts": 4}},
        {"overrides": {"learning_rate": 0.1}, "replication": 1, "final": {"cohesion": 0.4, "conflicts": 6}},
        # replication 2 of learning_rate 0.1 failed: simply absent
    ]

    rows = sim.aggregate_sweep(points, metrics=("cohesion", "conflicts"))

    assert [row["overrides"] for row in rows] == [{"learning_rate": 0.1}, {"learning_rate": 0.3}]
    assert rows[0] == {
        "overrides": {"learning_rate": 0.1},
        "replications": 2,
        "mean": {"cohesion": 0.3, "conflicts": 5.0},
        "std": {"cohesion": 0.1, "conflicts": 1.0},
        "min": {"cohesion": 0.2, "conflicts": 4.0},
        "max": {"cohesion": 0.4, "conflicts": 6.0},
    }
    assert rows[1]["replications"] == 1 and rows[1]["std"] == {"cohesion": 0.0, "conflicts": 0.0}
    json.dumps(rows)


def test_aggregate_sweep_sorts_two_parameter_grids_by_value():
    points = [
        {"overrides": {"temperature": t, "learning_rate": lr}, "replication": 0, "final": {"cohesion": lr * t}}
        for lr in (0.5, 0.1)
        for t in (2.0, 0.5)
    ]

    rows = sim.aggregate_sweep(points, metrics=("cohesion",))

    assert [(row["overrides"]["learning_rate"], row["overrides"]["temperature"]) for row in rows] == [
        (0.1, 0.5),
        (0.1, 2.0),
        (0.5, 0.5),
        (0.5, 2.0),
    ]


# ---------------------------------------------------------------------------------------------
# Charts


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_run_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from workers import simulation_charts

    for count in (6, 40):
        inp = make_input(count, EVENTS_SPEC)
        path = tmp_path / f"run{count}.png"
        simulation_charts.render_run_chart(sim.run_simulation(inp), inp.agent_names, path, title="A run")

        assert _png_size(path) == (1200, 600)
        assert path.stat().st_size > 20_000


def test_sweep_charts_are_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from workers import simulation_charts

    def row(overrides, value):
        stats = {"cohesion": value, "conflicts": 10 * value, "cooperation_rate": 0.5, "mean_affinity": value / 2}
        return {
            "overrides": overrides,
            "replications": 2,
            "mean": stats,
            "std": dict.fromkeys(stats, 0.05),
            "min": stats,
            "max": stats,
        }

    grids = {
        "one": [row({"learning_rate": lr}, lr) for lr in (0.1, 0.2, 0.4)],
        "two": [
            row({"learning_rate": lr, "noise": noise}, lr + noise) for lr in (0.1, 0.2) for noise in (0.0, 0.1, 0.3)
        ],
        "three": [row({"learning_rate": lr, "noise": 0.1, "temperature": 1.0}, lr) for lr in (0.1, 0.2)],
        "empty": [],
    }
    for name, rows in grids.items():
        path = tmp_path / f"{name}.png"
        simulation_charts.render_sweep_chart(rows, path, metric="cohesion", title=name)

        assert _png_size(path) == (1200, 600)
        assert path.stat().st_size > 5_000
