"""A seeded multi-agent simulation: agents pick partners and cooperate or defect, round after round.

Every agent has the Big Five traits (TRAITS, each in [0, 1]) and a directed affinity toward every
other agent (`affinity[i, j]`: how agent i feels about j, in [-1, 1], starting at 0). The caller
also gives a memory-similarity matrix (cosine similarity of the agents' memory centroids).

The rules, per round r (events of round r fire first, in spec order):

1. Agent i acts with probability ``0.2 + 0.8 * extraversion_i`` if it is still in the run and has
   a neighbour still in the run (the topology, built once from the seed, says who neighbours whom).
2. An acting agent picks one neighbour j by the Gumbel-max trick: the argmax over allowed j of
   ``score[i, j] / temperature_i + gumbel[i, j]`` with
   ``score[i, j] = affinity[i, j] + trait_weight * trait_similarity[i, j] + memory_weight * memory[i, j]``
   and ``temperature_i = temperature * (0.5 + openness_i)`` (open agents explore more).
   ``trait_similarity = 1 - 2 * mean |traits_i - traits_j|`` is in [-1, 1].
3. The actor and the chosen partner each decide, toward the other, to cooperate with probability
   ``p = sigmoid(cooperation_bias + 2 * (agreeableness - neuroticism) + 2 * affinity_toward_other
   + memory_weight * memory)``; a mistake flips the decision with probability
   ``noise * (1 - conscientiousness)``, so the cooperation probability is ``p (1 - e) + (1 - p) e``.
4. Each side's affinity toward the other moves by ``rate * (target - affinity)``:
   both cooperate: target +1 at ``learning_rate``; betrayed (I cooperated, you defected): target -1 at
   ``learning_rate * (1 + betrayal_penalty) * (0.5 + neuroticism)``; I defected on a cooperator: no
   change; both defect: target -1 at ``learning_rate``. Then the affinity is clipped to [-1, 1].

Updates are synchronous: every decision and delta of a round is computed from the affinity at the
start of the round; the actors' deltas are added first, then the partners' (each set touches every
cell at most once), then the touched cells are clipped. So the order agents are visited in never
matters, and the plain-Python `run_reference` reproduces the vectorised `run_simulation`.

Per-round metrics (METRICS), over ordered pairs (i, j) of neighbours both still in the run:
``mean_affinity`` is their mean affinity; ``cohesion`` is (allied - in conflict) / pairs, where a pair
is in conflict when ``affinity[i, j] + affinity[j, i] < 2 * conflict_threshold`` and allied when that
sum is ``> -2 * conflict_threshold``; ``conflicts`` counts the round's interactions in which someone
defected; ``cooperation_rate`` is the share of the round's decisions that were to cooperate (0 when
nobody interacted); ``interactions`` counts the round's interactions.

Final compatibility of a pair: ``0.25 * (affinity[i, j] + affinity[j, i]) + 0.25 * (trait_similarity
+ memory)``: half what they lived through, half what they brought in; symmetric, in [-1, 1], 0 on
the diagonal.

Randomness: one ``Generator(PCG64(seed))``. Before round 1 the topology draws (random: an (n, n)
uniform matrix; small world: an (n, degree/2) uniform matrix then an (n, degree/2) integer matrix).
Every round: ``random(n)`` (who acts); then, if k > 0 agents act, ``standard_exponential((k, n))``
(row per actor in index order; the Gumbel noise is ``-log`` of it) and ``random((k, 2))`` (the actor's,
then the partner's decision).

Cost per round is O(k * n) for the partner choice and O(n^2) elementwise for the metrics; the engine
holds eight (n, n) float64 arrays and a few boolean ones (some 300 MB at MAX_AGENTS, 450 MB at peak).
"""

import math
import numbers
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
TOPOLOGIES = ("all_pairs", "random", "small_world")
EVENT_TYPES = ("set_parameter", "set_trait", "shock", "remove_agent")
METRICS = ("mean_affinity", "cohesion", "conflicts", "cooperation_rate", "interactions")
MAX_AGENTS = 2000
MAX_ROUNDS = 5000
MAX_EVENTS = 200
MAX_SHOCK = 2.0
TRANSCRIPT_LENGTH = 40
DEFAULT_TRAIT = 0.5

OPENNESS, CONSCIENTIOUSNESS, EXTRAVERSION, AGREEABLENESS, NEUROTICISM = range(len(TRAITS))
# Turns a sum of absolute trait differences into 1 - 2 * mean difference: 1 when identical, -1 when opposite.
_TRAIT_DIFFERENCE_SCALE = 2.0 / len(TRAITS)
_TOPOLOGY_DEFAULTS = {
    "all_pairs": {},
    "random": {"degree": 4},
    "small_world": {"degree": 4, "rewire": 0.1},
}


@dataclass(frozen=True)
class Parameter:
    default: float
    minimum: float
    maximum: float
    help: str


PARAMETERS: dict[str, Parameter] = {
    "learning_rate": Parameter(
        0.1, 0.0, 1.0, "Share of the distance to an interaction's outcome an affinity moves per interaction."
    ),
    "temperature": Parameter(
        0.5, 0.01, 10.0, "Partner-choice temperature (times 0.5 + openness): higher explores, lower exploits."
    ),
    "memory_weight": Parameter(
        1.0, 0.0, 5.0, "Weight of memory similarity in the partner score and in the log-odds of cooperating."
    ),
    "trait_weight": Parameter(1.0, 0.0, 5.0, "Weight of trait similarity in the partner score."),
    "cooperation_bias": Parameter(1.0, -10.0, 10.0, "Baseline log-odds of cooperating."),
    "betrayal_penalty": Parameter(
        1.0, 0.0, 10.0, "How much faster a betrayed agent's affinity falls (times 0.5 + neuroticism)."
    ),
    "conflict_threshold": Parameter(
        -0.2, -1.0, 0.0, "Mutual affinity below which a pair is in conflict (above its negative: allied)."
    ),
    "noise": Parameter(0.05, 0.0, 0.5, "Probability of a mistaken (flipped) decision, times 1 - conscientiousness."),
}


class SpecError(ValueError):
    """A scenario spec (or overrides) this engine cannot run; `errors` maps each field path to its reasons."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        path, reasons = next(iter(errors.items()))
        super().__init__(f"{path}: {reasons[0]}")


@dataclass
class SimulationInput:
    agent_names: list[str]
    traits: np.ndarray
    memory_similarity: np.ndarray
    spec: dict
    seed: int
    overrides: dict[str, float] = field(default_factory=dict)


@dataclass
class SimulationResult:
    affinity: np.ndarray
    compatibility: np.ndarray
    metrics: dict[str, np.ndarray]
    interactions: np.ndarray
    events_fired: list[dict]
    transcript: list[dict]
    rounds_run: int


# ---------------------------------------------------------------------------------------------
# Spec validation


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _add_error(errors: dict[str, list[str]], path: str, reason: str) -> None:
    errors.setdefault(path, []).append(reason)


def _checked_number(value, path: str, minimum: float, maximum: float, errors: dict) -> float | None:
    if not _is_number(value):
        _add_error(errors, path, f"must be a number, not {_describe(value)}")
        return None
    if not minimum <= value <= maximum:
        _add_error(errors, path, f"must be between {minimum:g} and {maximum:g} (got {value:g})")
        return None
    return float(value)


def _checked_integer(value, path: str, minimum: int, maximum: int, errors: dict) -> int | None:
    if not _is_integer(value):
        _add_error(errors, path, f"must be an integer, not {_describe(value)}")
        return None
    if not minimum <= value <= maximum:
        _add_error(errors, path, f"must be between {minimum} and {maximum} (got {value})")
        return None
    return int(value)


def _checked_name(value, path: str, errors: dict) -> str | None:
    if not isinstance(value, str) or not value:
        _add_error(errors, path, f"must be a non-empty string, not {_describe(value)}")
        return None
    return value


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, float):
        return f"{value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_parameter_values(values, path: str, errors: dict) -> dict[str, float]:
    """The valid entries of a {parameter: value} dict; every problem goes to errors under path.<name>."""
    if not isinstance(values, dict):
        _add_error(errors, path, f"must be an object of parameter: number, not {_describe(values)}")
        return {}
    checked = {}
    for name, value in values.items():
        parameter = PARAMETERS.get(name)
        if parameter is None:
            _add_error(errors, f"{path}.{name}", f"unknown parameter (known: {', '.join(PARAMETERS)})")
            continue
        number = _checked_number(value, f"{path}.{name}", parameter.minimum, parameter.maximum, errors)
        if number is not None:
            checked[name] = number
    return checked


def _check_topology(topology, errors: dict) -> dict | None:
    if not isinstance(topology, dict):
        _add_error(errors, "topology", f'must be an object like {{"type": "all_pairs"}}, not {_describe(topology)}')
        return None
    kind = topology.get("type")
    if kind not in TOPOLOGIES:
        reason = "required" if "type" not in topology else f"unknown topology {kind!r} (one of {', '.join(TOPOLOGIES)})"
        _add_error(errors, "topology.type", reason)
        return None
    normalised = {"type": kind, **_TOPOLOGY_DEFAULTS[kind]}
    for key in topology:
        if key != "type" and key not in normalised:
            _add_error(errors, f"topology.{key}", f"unknown field for a {kind} topology")
    if kind == "random" and "degree" in topology:
        normalised["degree"] = _checked_integer(topology["degree"], "topology.degree", 1, MAX_AGENTS - 1, errors)
    if kind == "small_world":
        if "degree" in topology:
            degree = _checked_integer(topology["degree"], "topology.degree", 2, MAX_AGENTS - 1, errors)
            if degree is not None and degree % 2:
                _add_error(errors, "topology.degree", f"must be even for a small_world ring lattice (got {degree})")
            normalised["degree"] = degree
        if "rewire" in topology:
            normalised["rewire"] = _checked_number(topology["rewire"], "topology.rewire", 0.0, 1.0, errors)
    return normalised


# Required and optional fields (besides round and type) of each event type.
_EVENT_FIELDS = {
    "set_parameter": ({"parameter", "value"}, set()),
    "set_trait": ({"agent", "trait", "value"}, set()),
    "shock": ({"delta"}, {"agents"}),
    "remove_agent": ({"agent"}, set()),
}


def _check_event(event, path: str, rounds: int | None, errors: dict) -> dict | None:
    if not isinstance(event, dict):
        _add_error(errors, path, f"must be an object, not {_describe(event)}")
        return None
    before = sum(len(reasons) for reasons in errors.values())
    # With invalid rounds the upper bound is unknown: check only what can be checked.
    last_round = rounds if rounds is not None else MAX_ROUNDS
    if "round" not in event:
        _add_error(errors, f"{path}.round", "required")
    else:
        _checked_integer(event["round"], f"{path}.round", 1, last_round, errors)
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        reason = "required" if "type" not in event else f"unknown event type {kind!r} (one of {', '.join(EVENT_TYPES)})"
        _add_error(errors, f"{path}.type", reason)
        return None
    required, optional = _EVENT_FIELDS[kind]
    for key in event:
        if key not in required | optional | {"round", "type"}:
            _add_error(errors, f"{path}.{key}", f"unknown field for a {kind} event")
    for key in sorted(required - set(event)):
        _add_error(errors, f"{path}.{key}", "required")

    normalised = {"round": event.get("round"), "type": kind}
    if kind == "set_parameter" and "parameter" in event:
        name = event["parameter"]
        parameter = PARAMETERS.get(name) if isinstance(name, str) else None
        if parameter is None:
            _add_error(errors, f"{path}.parameter", f"unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
        elif "value" in event:
            normalised["value"] = _checked_number(
                event["value"], f"{path}.value", parameter.minimum, parameter.maximum, errors
            )
        normalised["parameter"] = name
    if kind == "set_trait":
        if "agent" in event:
            normalised["agent"] = _checked_name(event["agent"], f"{path}.agent", errors)
        if "trait" in event:
            if event["trait"] not in TRAITS:
                _add_error(errors, f"{path}.trait", f"unknown trait {event['trait']!r} (one of {', '.join(TRAITS)})")
            normalised["trait"] = event["trait"]
        if "value" in event:
            normalised["value"] = _checked_number(event["value"], f"{path}.value", 0.0, 1.0, errors)
    if kind == "shock":
        if "agents" in event:
            agents = event["agents"]
            if not isinstance(agents, list) or not agents:
                _add_error(errors, f"{path}.agents", "must be a non-empty list of agent names (leave it out for all)")
            else:
                for position, name in enumerate(agents):
                    _checked_name(name, f"{path}.agents[{position}]", errors)
                normalised["agents"] = list(agents)
        if "delta" in event:
            normalised["delta"] = _checked_number(event["delta"], f"{path}.delta", -MAX_SHOCK, MAX_SHOCK, errors)
    if kind == "remove_agent" and "agent" in event:
        normalised["agent"] = _checked_name(event["agent"], f"{path}.agent", errors)
    after = sum(len(reasons) for reasons in errors.values())
    return normalised if after == before else None


def validate_spec(spec) -> dict:
    """A normalised copy of the spec (defaults filled in, events sorted by round); SpecError lists every problem."""
    if not isinstance(spec, dict):
        raise SpecError({"spec": [f"must be an object, not {_describe(spec)}"]})
    errors: dict[str, list[str]] = {}
    for key in spec:
        if key not in ("rounds", "topology", "parameters", "events"):
            _add_error(errors, str(key), "unknown field (the spec has rounds, topology, parameters, events)")

    rounds = None
    if "rounds" not in spec:
        _add_error(errors, "rounds", "required")
    else:
        rounds = _checked_integer(spec["rounds"], "rounds", 1, MAX_ROUNDS, errors)

    topology = _check_topology(spec.get("topology", {"type": "all_pairs"}), errors)
    parameters = {name: parameter.default for name, parameter in PARAMETERS.items()}
    parameters.update(_check_parameter_values(spec.get("parameters", {}), "parameters", errors))

    events = []
    raw_events = spec.get("events", [])
    if not isinstance(raw_events, list):
        _add_error(errors, "events", f"must be a list, not {_describe(raw_events)}")
        raw_events = []
    elif len(raw_events) > MAX_EVENTS:
        _add_error(errors, "events", f"at most {MAX_EVENTS} events (got {len(raw_events)})")
    for index, event in enumerate(raw_events):
        normalised = _check_event(event, f"events[{index}]", rounds, errors)
        if normalised is not None:
            events.append(normalised)

    if errors:
        raise SpecError(errors)
    events.sort(key=lambda event: event["round"])  # stable: same-round events keep their order
    return {"rounds": rounds, "topology": topology, "parameters": parameters, "events": events}


def check_spec_agents(spec: dict, agent_names: list[str]) -> None:
    """SpecError unless the (valid) spec can run with these agents: events name agents in the run, topology fits."""
    topology = validate_spec(spec)["topology"]
    errors: dict[str, list[str]] = {}
    count = len(agent_names)
    if count < 2:
        _add_error(errors, "agents", f"a simulation needs at least 2 agents (got {count})")
    if count > MAX_AGENTS:
        _add_error(errors, "agents", f"at most {MAX_AGENTS} agents (got {count})")
    duplicates = sorted(name for name, times in Counter(agent_names).items() if times > 1)
    if duplicates:
        _add_error(errors, "agents", f"agent names must be unique (repeated: {', '.join(map(repr, duplicates))})")

    if "degree" in topology and topology["degree"] >= count:
        _add_error(errors, "topology.degree", f"must be less than the number of agents ({count})")

    known = set(agent_names)
    # The spec's own order, so that events[i] points at the event as the caller wrote it.
    for index, event in enumerate(spec.get("events", [])):
        if "agent" in event and event["agent"] not in known:
            _add_error(errors, f"events[{index}].agent", f"no agent named {event['agent']!r} in this run")
        missing = [name for name in event.get("agents", []) if name not in known]
        if missing:
            _add_error(
                errors, f"events[{index}].agents", f"no agents named {', '.join(map(repr, missing))} in this run"
            )
    if errors:
        raise SpecError(errors)


def _checked_overrides(overrides) -> dict[str, float]:
    errors: dict[str, list[str]] = {}
    checked = _check_parameter_values(overrides, "overrides", errors)
    if errors:
        raise SpecError(errors)
    return checked


# ---------------------------------------------------------------------------------------------
# Inputs shared by both implementations


def traits_matrix(traits: list[dict]) -> np.ndarray:
    """(n, 5) float64 in TRAITS order from one {trait: value} dict per agent; missing -> 0.5, clipped to [0, 1]."""
    matrix = np.full((len(traits), len(TRAITS)), DEFAULT_TRAIT, dtype=np.float64)
    for row, agent_traits in enumerate(traits):
        if agent_traits is None:
            continue
        if not isinstance(agent_traits, dict):
            raise ValueError(f"agent {row}: traits must be an object of trait: number, not {_describe(agent_traits)}")
        for column, name in enumerate(TRAITS):
            value = agent_traits.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise ValueError(f"agent {row}: trait {name} must be a number, not {_describe(value)}")
            matrix[row, column] = min(1.0, max(0.0, float(value)))
    return matrix


@dataclass
class _Prepared:
    spec: dict
    parameters: dict[str, float]
    traits: np.ndarray
    memory: np.ndarray


def _prepare(inp: SimulationInput) -> _Prepared:
    """Checks the input and cleans its arrays (memory symmetrised, clipped, unknown -> 0, diagonal 0)."""
    count = len(inp.agent_names)
    traits = np.array(inp.traits, dtype=np.float64)
    memory = np.array(inp.memory_similarity, dtype=np.float64)
    if traits.shape != (count, len(TRAITS)):
        raise ValueError(
            f"traits has shape {traits.shape}, expected ({count}, {len(TRAITS)}): one row per agent name "
            f"({count} names), one column per trait in TRAITS order"
        )
    if memory.shape != (count, count):
        raise ValueError(
            f"memory_similarity has shape {memory.shape}, expected ({count}, {count}) for {count} agents "
            f"(traits has {traits.shape[0]} rows)"
        )
    if not np.isfinite(traits).all():
        raise ValueError("traits contains NaN or infinite values")
    if not _is_integer(inp.seed) or inp.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {inp.seed!r}")
    spec = validate_spec(inp.spec)
    check_spec_agents(spec, list(inp.agent_names))
    parameters = {**spec["parameters"], **_checked_overrides(inp.overrides)}

    np.clip(traits, 0.0, 1.0, out=traits)
    np.nan_to_num(memory, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    memory += memory.T  # numpy buffers the overlapping transpose
    memory /= 2.0
    np.clip(memory, -1.0, 1.0, out=memory)
    np.fill_diagonal(memory, 0.0)
    return _Prepared(spec=spec, parameters=parameters, traits=traits, memory=memory)


def _event_record(event: dict, **changes) -> dict:
    return {"round": event["round"], "type": event["type"], **changes}


# ---------------------------------------------------------------------------------------------
# The vectorised engine


def _build_adjacency(topology: dict, count: int, rng: np.random.Generator) -> np.ndarray:
    """Symmetric (n, n) bool neighbour matrix with a False diagonal; draws the topology's random numbers."""
    adjacency = np.zeros((count, count), dtype=bool)
    if topology["type"] == "all_pairs":
        adjacency[:] = True
    elif topology["type"] == "random":
        keys = rng.random((count, count))
        np.fill_diagonal(keys, np.inf)  # never one's own neighbour
        degree = topology["degree"]
        nearest = np.argpartition(keys, degree - 1, axis=1)[:, :degree]
        adjacency[np.repeat(np.arange(count), degree), nearest.ravel()] = True
        adjacency |= adjacency.T
    else:
        half = topology["degree"] // 2
        rewire_draws = rng.random((count, half))
        jumps = rng.integers(1, count, size=(count, half))
        sources = np.repeat(np.arange(count), half)
        lattice = (sources + np.tile(np.arange(1, half + 1), count)) % count
        rewired = (sources + jumps.ravel()) % count
        # A rewired edge that lands on an existing one merges with it; the lattice edge it replaced is gone.
        targets = np.where(rewire_draws.ravel() < topology["rewire"], rewired, lattice)
        adjacency[sources, targets] = True
        adjacency |= adjacency.T
    np.fill_diagonal(adjacency, False)
    return adjacency


def _trait_similarity(traits: np.ndarray) -> np.ndarray:
    difference = np.abs(traits[:, None, 0] - traits[None, :, 0])
    for column in range(1, len(TRAITS)):
        difference += np.abs(traits[:, None, column] - traits[None, :, column])
    return 1.0 - difference * _TRAIT_DIFFERENCE_SCALE


def _trait_similarity_row(traits: np.ndarray, agent: int) -> np.ndarray:
    difference = np.abs(traits[agent, 0] - traits[:, 0])
    for column in range(1, len(TRAITS)):
        difference += np.abs(traits[agent, column] - traits[:, column])
    return 1.0 - difference * _TRAIT_DIFFERENCE_SCALE


def _cooperation_probability(bias, trait_logit, affinity, memory_term, mistake):
    logit = bias + trait_logit + 2.0 * affinity + memory_term
    probability = 1.0 / (1.0 + np.exp(-logit))
    return probability * (1.0 - mistake) + (1.0 - probability) * mistake


def _affinity_rates(own, other, learning_rate: float, betrayed_rate: np.ndarray) -> np.ndarray:
    """Rate at which a side's affinity moves, from its own and the other's decision (True = cooperate)."""
    return np.where(own & other, learning_rate, np.where(own, betrayed_rate, np.where(other, 0.0, learning_rate)))


@dataclass
class _EngineState:
    """What the round loop and the events share; arrays are updated in place."""

    parameters: dict[str, float]
    traits: np.ndarray
    memory: np.ndarray
    adjacency: np.ndarray
    affinity: np.ndarray
    trait_similarity: np.ndarray
    alive: np.ndarray
    blocked: np.ndarray  # (i, j) cannot be chosen by i: not neighbours, or j was removed
    counted: np.ndarray  # ordered pairs the metrics average over: neighbours, both in the run
    partner_counts: np.ndarray  # neighbours still in the run, per agent
    # (affinity + trait_weight * trait_similarity + memory_weight * memory) / temperature_i, kept up to date cell
    # by cell after each round and rebuilt after events, so a round only adds the Gumbel noise.
    partner_score: np.ndarray
    inverse_temperature: np.ndarray
    pair_sums: np.ndarray  # affinity + affinity.T, for the cohesion metric, kept up to date the same way


def _rebuild_scores(state: _EngineState) -> None:
    parameters = state.parameters
    state.inverse_temperature = 1.0 / (parameters["temperature"] * (0.5 + state.traits[:, OPENNESS]))
    np.multiply(state.trait_similarity, parameters["trait_weight"], out=state.partner_score)
    np.multiply(state.memory, parameters["memory_weight"], out=state.pair_sums)  # pair_sums as scratch
    state.partner_score += state.pair_sums
    state.partner_score += state.affinity
    state.partner_score *= state.inverse_temperature[:, None]
    np.add(state.affinity, state.affinity.T, out=state.pair_sums)


def _update_scores(state: _EngineState, rows: np.ndarray, columns: np.ndarray) -> None:
    """Brings partner_score and pair_sums up to date at the (row, column) cells whose affinity changed."""
    parameters = state.parameters
    static = (
        parameters["trait_weight"] * state.trait_similarity[rows, columns]
        + parameters["memory_weight"] * state.memory[rows, columns]
    )
    state.partner_score[rows, columns] = (state.affinity[rows, columns] + static) * state.inverse_temperature[rows]
    pair_sums = state.affinity[rows, columns] + state.affinity[columns, rows]
    state.pair_sums[rows, columns] = pair_sums
    state.pair_sums[columns, rows] = pair_sums


def _fire_event(state: _EngineState, event: dict, index_of: dict[str, int]) -> dict:
    kind = event["type"]
    if kind == "set_parameter":
        name = event["parameter"]
        previous = state.parameters[name]
        state.parameters[name] = event["value"]
        return _event_record(event, parameter=name, value=event["value"], previous=previous)
    if kind == "set_trait":
        agent, column = index_of[event["agent"]], TRAITS.index(event["trait"])
        previous = float(state.traits[agent, column])
        state.traits[agent, column] = event["value"]
        row = _trait_similarity_row(state.traits, agent)
        state.trait_similarity[agent, :] = row
        state.trait_similarity[:, agent] = row
        return _event_record(event, agent=event["agent"], trait=event["trait"], value=event["value"], previous=previous)
    if kind == "shock":
        members = np.zeros(len(state.alive), dtype=bool)
        if "agents" in event:
            members[[index_of[name] for name in event["agents"]]] = True
        else:
            members[:] = True
        touched = members[:, None] | members[None, :]
        np.add(state.affinity, event["delta"], out=state.affinity, where=touched)
        np.clip(state.affinity, -1.0, 1.0, out=state.affinity)
        np.fill_diagonal(state.affinity, 0.0)
        return _event_record(event, agents=list(event.get("agents", [])) or "all", delta=event["delta"])
    agent = index_of[event["agent"]]
    if state.alive[agent]:
        state.alive[agent] = False
        state.blocked[:, agent] = True
        state.counted[agent, :] = False
        state.counted[:, agent] = False
        state.partner_counts -= state.adjacency[:, agent]
    return _event_record(event, agent=event["agent"])


def run_simulation(
    inp: SimulationInput,
    *,
    report_progress: Callable[[float, str], None] = lambda fraction, message: None,
    raise_if_cancelled: Callable[[], None] = lambda: None,
) -> SimulationResult:
    """Runs the scenario on numpy arrays (no loop over agents); same input and seed give identical results."""
    prepared = _prepare(inp)
    names = list(inp.agent_names)
    count, rounds = len(names), prepared.spec["rounds"]
    index_of = {name: index for index, name in enumerate(names)}
    rng = np.random.Generator(np.random.PCG64(inp.seed))

    adjacency = _build_adjacency(prepared.spec["topology"], count, rng)
    state = _EngineState(
        parameters=dict(prepared.parameters),
        traits=prepared.traits,
        memory=prepared.memory,
        adjacency=adjacency,
        affinity=np.zeros((count, count)),
        trait_similarity=_trait_similarity(prepared.traits),
        alive=np.ones(count, dtype=bool),
        blocked=~adjacency,
        counted=adjacency.copy(),
        partner_counts=adjacency.sum(axis=1),
        partner_score=np.empty((count, count)),
        inverse_temperature=np.empty(count),
        pair_sums=np.empty((count, count)),
    )
    _rebuild_scores(state)
    affinity = state.affinity
    # Buffers for the acting agents' rows (the first k rows are used when k agents act), reused every round.
    exponentials = np.empty((count, count))
    scores = np.empty((count, count))
    blocked_rows = np.empty((count, count), dtype=bool)
    flags = np.empty((count, count), dtype=bool)
    interactions = np.zeros((count, count), dtype=np.int64)
    metrics = {name: np.zeros(rounds) for name in METRICS}
    events_by_round: dict[int, list[dict]] = {}
    for event in prepared.spec["events"]:
        events_by_round.setdefault(event["round"], []).append(event)
    events_fired: list[dict] = []
    candidates: list[tuple] = []

    for round_number in range(1, rounds + 1):
        raise_if_cancelled()
        round_events = events_by_round.get(round_number, ())
        for event in round_events:
            events_fired.append(_fire_event(state, event, index_of))
        if round_events:
            _rebuild_scores(state)
        parameters, traits = state.parameters, state.traits

        acting_draws = rng.random(count)
        acting = state.alive & (state.partner_counts > 0) & (acting_draws < 0.2 + 0.8 * traits[:, EXTRAVERSION])
        actors = np.flatnonzero(acting)
        actor_count = actors.size
        round_metrics = {"conflicts": 0.0, "cooperation_rate": 0.0, "interactions": 0.0}
        if actor_count:
            # Gumbel-max over each actor's row: partner_score - log(Exp(1)), neighbours still in the run only.
            noise_rows = exponentials[:actor_count]
            score_rows = scores[:actor_count]
            blocked_in_rows = blocked_rows[:actor_count]
            rng.standard_exponential(out=noise_rows)
            decision_draws = rng.random((actor_count, 2))
            # mode="clip" (the indices are valid anyway) lets take write straight into `out` instead of buffering.
            np.take(state.partner_score, actors, axis=0, out=score_rows, mode="clip")
            np.log(noise_rows, out=noise_rows)
            score_rows -= noise_rows
            np.take(state.blocked, actors, axis=0, out=blocked_in_rows, mode="clip")
            np.copyto(score_rows, -np.inf, where=blocked_in_rows)
            partners = score_rows.argmax(axis=1)

            before_actor = affinity[actors, partners]
            before_partner = affinity[partners, actors]
            memory_term = parameters["memory_weight"] * state.memory[actors, partners]
            trait_logit = 2.0 * (traits[:, AGREEABLENESS] - traits[:, NEUROTICISM])
            mistake = parameters["noise"] * (1.0 - traits[:, CONSCIENTIOUSNESS])
            bias = parameters["cooperation_bias"]
            actor_cooperates = decision_draws[:, 0] < _cooperation_probability(
                bias, trait_logit[actors], before_actor, memory_term, mistake[actors]
            )
            partner_cooperates = decision_draws[:, 1] < _cooperation_probability(
                bias, trait_logit[partners], before_partner, memory_term, mistake[partners]
            )

            learning_rate = parameters["learning_rate"]
            betrayed_rate = learning_rate * (1.0 + parameters["betrayal_penalty"]) * (0.5 + traits[:, NEUROTICISM])
            both_cooperate = actor_cooperates & partner_cooperates
            target = np.where(both_cooperate, 1.0, -1.0)
            actor_rate = _affinity_rates(actor_cooperates, partner_cooperates, learning_rate, betrayed_rate[actors])
            partner_rate = _affinity_rates(partner_cooperates, actor_cooperates, learning_rate, betrayed_rate[partners])
            # Each actor touches one cell of its row and one of its column, so no cell is added to twice per line.
            affinity[actors, partners] += actor_rate * (target - before_actor)
            affinity[partners, actors] += partner_rate * (target - before_partner)
            touched_rows = np.concatenate([actors, partners])
            touched_columns = np.concatenate([partners, actors])
            affinity[touched_rows, touched_columns] = np.clip(affinity[touched_rows, touched_columns], -1.0, 1.0)
            _update_scores(state, touched_rows, touched_columns)
            interactions[actors, partners] += 1
            interactions[partners, actors] += 1

            decisions = int(actor_cooperates.sum()) + int(partner_cooperates.sum())
            round_metrics = {
                "conflicts": float(np.count_nonzero(~both_cooperate)),
                "cooperation_rate": decisions / (2.0 * actor_count),
                "interactions": float(actor_count),
            }
            candidates.append(
                _notable_interaction(
                    round_number,
                    actors,
                    partners,
                    actor_cooperates,
                    partner_cooperates,
                    (before_actor + before_partner) / 2.0,
                    (affinity[actors, partners] + affinity[partners, actors]) / 2.0,
                    before_actor + before_partner > -2.0 * parameters["conflict_threshold"],
                )
            )

        pair_count = int(np.count_nonzero(state.counted))
        mean_affinity = cohesion = 0.0
        if pair_count:
            threshold = parameters["conflict_threshold"]
            mean_affinity = float(np.sum(affinity, where=state.counted)) / pair_count
            np.greater(state.pair_sums, -2.0 * threshold, out=flags)
            allied = np.count_nonzero(np.logical_and(flags, state.counted, out=flags))
            np.less(state.pair_sums, 2.0 * threshold, out=flags)
            in_conflict = np.count_nonzero(np.logical_and(flags, state.counted, out=flags))
            cohesion = (allied - in_conflict) / pair_count
        index = round_number - 1
        metrics["mean_affinity"][index] = mean_affinity
        metrics["cohesion"][index] = cohesion
        for name, value in round_metrics.items():
            metrics[name][index] = value
        report_progress(round_number / rounds, f"round {round_number}/{rounds}")

    compatibility = 0.25 * (affinity + affinity.T) + 0.25 * (state.trait_similarity + state.memory)
    np.fill_diagonal(compatibility, 0.0)
    return SimulationResult(
        affinity=affinity,
        compatibility=compatibility,
        metrics=metrics,
        interactions=interactions,
        events_fired=events_fired,
        transcript=_transcript(candidates, names),
        rounds_run=rounds,
    )


def _notable_interaction(
    round_number, actors, partners, actor_cooperates, partner_cooperates, before, after, were_allied
) -> tuple:
    """The round's most notable interaction: the betrayal between allies that moved them most, else the biggest move."""
    change = np.abs(after - before)
    betrayals = np.flatnonzero((actor_cooperates != partner_cooperates) & were_allied)
    pool = betrayals if betrayals.size else np.arange(actors.size)
    pick = int(pool[np.argmax(change[pool])])
    return (
        bool(betrayals.size),
        float(change[pick]),
        round_number,
        int(actors[pick]),
        int(partners[pick]),
        bool(actor_cooperates[pick]),
        bool(partner_cooperates[pick]),
        float(before[pick]),
        float(after[pick]),
    )


def _transcript(candidates: list[tuple], names: list[str]) -> list[dict]:
    """At most TRANSCRIPT_LENGTH of the rounds' notable interactions: betrayals of allies first, then the biggest
    changes of mutual affinity, then the earliest; listed in round order."""
    ranked = sorted(candidates, key=lambda candidate: (not candidate[0], -candidate[1], candidate[2]))
    chosen = sorted(ranked[:TRANSCRIPT_LENGTH], key=lambda candidate: candidate[2])
    transcript = []
    for _, _, round_number, actor, partner, actor_cooperates, partner_cooperates, before, after in chosen:
        a, b = names[actor], names[partner]
        transcript.append(
            {
                "round": round_number,
                "a": a,
                "b": b,
                "actions": {"a": _action(actor_cooperates), "b": _action(partner_cooperates)},
                "affinity_before": before,
                "affinity_after": after,
                "text": _interaction_text(round_number, a, b, actor_cooperates, partner_cooperates, before, after),
            }
        )
    return transcript


def _action(cooperates: bool) -> str:
    return "cooperate" if cooperates else "defect"


def _interaction_text(round_number, a, b, a_cooperates, b_cooperates, before, after) -> str:
    if a_cooperates and b_cooperates:
        what = f"{a} and {b} cooperated"
    elif a_cooperates:
        what = f"{b} defected on {a}, who cooperated"
    elif b_cooperates:
        what = f"{a} defected on {b}, who cooperated"
    else:
        what = f"{a} and {b} both defected"
    if after == before:
        change = f"stayed at {before:+.2f}"
    else:
        change = f"{'rose' if after > before else 'fell'} from {before:+.2f} to {after:+.2f}"
    return f"Round {round_number}: {what}; their mutual affinity {change}."


# ---------------------------------------------------------------------------------------------
# The plain-Python reference: the same rules, one agent and one pair at a time


def run_reference(inp: SimulationInput) -> dict[str, list[float]]:
    """The per-round metrics of `run_simulation`, computed with lists and loops (numpy only draws the numbers)."""
    prepared = _prepare(inp)
    count, rounds = len(inp.agent_names), prepared.spec["rounds"]
    index_of = {name: index for index, name in enumerate(inp.agent_names)}
    parameters = dict(prepared.parameters)
    traits = prepared.traits.tolist()
    memory = prepared.memory.tolist()
    rng = np.random.Generator(np.random.PCG64(inp.seed))

    neighbours = _reference_neighbours(prepared.spec["topology"], count, rng)
    affinity = [[0.0] * count for _ in range(count)]
    alive = [True] * count
    trait_similarity = [[_reference_trait_similarity(traits[i], traits[j]) for j in range(count)] for i in range(count)]
    static_score = None
    metrics = {name: [] for name in METRICS}
    events_by_round: dict[int, list[dict]] = {}
    for event in prepared.spec["events"]:
        events_by_round.setdefault(event["round"], []).append(event)

    for round_number in range(1, rounds + 1):
        for event in events_by_round.get(round_number, ()):
            kind = event["type"]
            if kind == "set_parameter":
                parameters[event["parameter"]] = event["value"]
                if event["parameter"] in ("trait_weight", "memory_weight"):
                    static_score = None
            elif kind == "set_trait":
                agent = index_of[event["agent"]]
                traits[agent][TRAITS.index(event["trait"])] = event["value"]
                for other in range(count):
                    similarity = _reference_trait_similarity(traits[agent], traits[other])
                    trait_similarity[agent][other] = similarity
                    trait_similarity[other][agent] = similarity
                static_score = None
            elif kind == "shock":
                members = {index_of[name] for name in event["agents"]} if "agents" in event else set(range(count))
                for i in range(count):
                    for j in range(count):
                        if i != j and (i in members or j in members):
                            affinity[i][j] = min(1.0, max(-1.0, affinity[i][j] + event["delta"]))
            else:
                alive[index_of[event["agent"]]] = False
        if static_score is None:
            trait_weight, memory_weight = parameters["trait_weight"], parameters["memory_weight"]
            static_score = [
                [trait_weight * trait_similarity[i][j] + memory_weight * memory[i][j] for j in range(count)]
                for i in range(count)
            ]

        acting_draws = rng.random(count).tolist()
        actors = [
            i
            for i in range(count)
            if alive[i]
            and any(alive[j] for j in neighbours[i])
            and acting_draws[i] < 0.2 + 0.8 * traits[i][EXTRAVERSION]
        ]
        exponentials = rng.standard_exponential((len(actors), count)).tolist() if actors else []
        decision_draws = rng.random((len(actors), 2)).tolist() if actors else []

        # Every decision and delta comes from the affinity at the start of the round.
        interactions = []
        for position, i in enumerate(actors):
            inverse_temperature = 1.0 / (parameters["temperature"] * (0.5 + traits[i][OPENNESS]))
            best_partner, best_score = -1, -math.inf
            for j in neighbours[i]:
                if not alive[j]:
                    continue
                draw = exponentials[position][j]
                log_draw = math.log(draw) if draw > 0.0 else -math.inf
                score = (affinity[i][j] + static_score[i][j]) * inverse_temperature - log_draw
                if score > best_score:
                    best_partner, best_score = j, score
            interactions.append((position, i, best_partner))

        deltas = []
        cooperations = conflicts = 0
        for position, i, j in interactions:
            i_probability = _reference_cooperation_probability(parameters, traits[i], affinity[i][j], memory[i][j])
            j_probability = _reference_cooperation_probability(parameters, traits[j], affinity[j][i], memory[j][i])
            i_cooperates = decision_draws[position][0] < i_probability
            j_cooperates = decision_draws[position][1] < j_probability
            target = 1.0 if i_cooperates and j_cooperates else -1.0
            i_rate = _reference_rate(parameters, traits[i], i_cooperates, j_cooperates)
            j_rate = _reference_rate(parameters, traits[j], j_cooperates, i_cooperates)
            deltas.append((i_rate * (target - affinity[i][j]), j_rate * (target - affinity[j][i])))
            cooperations += i_cooperates + j_cooperates
            conflicts += not (i_cooperates and j_cooperates)
        # Actors' deltas first, then partners', as the engine adds them; then clip what changed.
        for (_, i, j), (i_delta, _) in zip(interactions, deltas, strict=True):
            affinity[i][j] += i_delta
        for (_, i, j), (_, j_delta) in zip(interactions, deltas, strict=True):
            affinity[j][i] += j_delta
        for _, i, j in interactions:
            affinity[i][j] = min(1.0, max(-1.0, affinity[i][j]))
            affinity[j][i] = min(1.0, max(-1.0, affinity[j][i]))

        threshold = parameters["conflict_threshold"]
        pairs = allied = in_conflict = 0
        affinity_sum = 0.0
        for i in range(count):
            if not alive[i]:
                continue
            for j in neighbours[i]:
                if not alive[j]:
                    continue
                pairs += 1
                affinity_sum += affinity[i][j]
                pair_sum = affinity[i][j] + affinity[j][i]
                if pair_sum > -2.0 * threshold:
                    allied += 1
                elif pair_sum < 2.0 * threshold:
                    in_conflict += 1
        metrics["mean_affinity"].append(affinity_sum / pairs if pairs else 0.0)
        metrics["cohesion"].append((allied - in_conflict) / pairs if pairs else 0.0)
        metrics["conflicts"].append(float(conflicts))
        metrics["cooperation_rate"].append(cooperations / (2.0 * len(interactions)) if interactions else 0.0)
        metrics["interactions"].append(float(len(interactions)))
    return metrics


def _reference_neighbours(topology: dict, count: int, rng: np.random.Generator) -> list[list[int]]:
    adjacent = [[topology["type"] == "all_pairs" and i != j for j in range(count)] for i in range(count)]
    if topology["type"] == "random":
        keys = rng.random((count, count)).tolist()
        for i in range(count):
            others = sorted((j for j in range(count) if j != i), key=lambda j: keys[i][j])
            for j in others[: topology["degree"]]:
                adjacent[i][j] = adjacent[j][i] = True
    elif topology["type"] == "small_world":
        half = topology["degree"] // 2
        rewire_draws = rng.random((count, half)).tolist()
        jumps = rng.integers(1, count, size=(count, half)).tolist()
        for i in range(count):
            for offset in range(1, half + 1):
                if rewire_draws[i][offset - 1] < topology["rewire"]:
                    j = (i + jumps[i][offset - 1]) % count
                else:
                    j = (i + offset) % count
                if j != i:
                    adjacent[i][j] = adjacent[j][i] = True
    return [[j for j in range(count) if adjacent[i][j]] for i in range(count)]


def _reference_trait_similarity(a: list[float], b: list[float]) -> float:
    difference = 0.0
    for column in range(len(TRAITS)):
        difference += abs(a[column] - b[column])
    return 1.0 - difference * _TRAIT_DIFFERENCE_SCALE


def _reference_cooperation_probability(parameters: dict, traits: list[float], affinity: float, memory: float) -> float:
    trait_logit = 2.0 * (traits[AGREEABLENESS] - traits[NEUROTICISM])
    logit = parameters["cooperation_bias"] + trait_logit + 2.0 * affinity + parameters["memory_weight"] * memory
    probability = 1.0 / (1.0 + math.exp(-logit))
    mistake = parameters["noise"] * (1.0 - traits[CONSCIENTIOUSNESS])
    return probability * (1.0 - mistake) + (1.0 - probability) * mistake


def _reference_rate(parameters: dict, traits: list[float], own: bool, other: bool) -> float:
    learning_rate = parameters["learning_rate"]
    if own and other:
        return learning_rate
    if own:
        return learning_rate * (1.0 + parameters["betrayal_penalty"]) * (0.5 + traits[NEUROTICISM])
    if other:
        return 0.0
    return learning_rate


# ---------------------------------------------------------------------------------------------
# Summaries


def _jsonable(value):
    """Plain JSON values: floats rounded to 6 decimals, numpy scalars unwrapped."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return round(float(value), 6)
    return value


def summarize(result: SimulationResult, agent_names: list[str], *, top: int = 5) -> dict:
    """A JSON-able summary: final and mean metrics, the strongest and weakest pairs, events and transcript."""
    count = len(agent_names)
    if result.compatibility.shape != (count, count):
        raise ValueError(f"the result has {result.compatibility.shape[0]} agents but {count} names were given")
    first, second = np.triu_indices(count, 1)
    compatibility = result.compatibility[first, second]

    def pairs(order: np.ndarray) -> list[dict]:
        return [
            {
                "a": agent_names[first[pair]],
                "b": agent_names[second[pair]],
                "compatibility": compatibility[pair],
                "interactions": result.interactions[first[pair], second[pair]],
            }
            for pair in order[:top]
        ]

    # Stable sorts: equal compatibilities keep the (a, b) order of the names.
    return _jsonable(
        {
            "agents": count,
            "rounds": result.rounds_run,
            "final": {name: series[-1] for name, series in result.metrics.items()},
            "mean": {name: series.mean() for name, series in result.metrics.items()},
            "strongest_pairs": pairs(np.argsort(-compatibility, kind="stable")),
            "weakest_pairs": pairs(np.argsort(compatibility, kind="stable")),
            "events_fired": result.events_fired,
            "transcript": result.transcript,
        }
    )


def aggregate_sweep(
    points: list[dict], metrics=("mean_affinity", "cohesion", "conflicts", "cooperation_rate")
) -> list[dict]:
    """One row per grid point (distinct overrides) with the mean, population std, min and max over its replications."""
    groups: dict[tuple, list[dict]] = {}
    for point in points:
        key = tuple(sorted(point["overrides"].items()))
        groups.setdefault(key, []).append(point)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        row = {"overrides": dict(key), "replications": len(group), "mean": {}, "std": {}, "min": {}, "max": {}}
        for metric in metrics:
            values = [float(point["final"][metric]) for point in group if point["final"].get(metric) is not None]
            if not values:
                for statistic in ("mean", "std", "min", "max"):
                    row[statistic][metric] = None
                continue
            mean = math.fsum(values) / len(values)
            row["mean"][metric] = mean
            row["std"][metric] = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / len(values))
            row["min"][metric] = min(values)
            row["max"][metric] = max(values)
        rows.append(_jsonable(row))
    return rows
