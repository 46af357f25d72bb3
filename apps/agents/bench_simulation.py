"""`manage.py bench simulation`: agent-steps/s of the vectorised engine against a plain-Python run of the same rules.

Both implementations get the same seeded input (traits, a memory-similarity matrix from
clustered unit vectors, like real memory centroids) and play the same rules with the same
random draws; the bench checks that they agree before it reports a speed-up, so the
baseline is the same model, not a simpler one.
"""

import time

import numpy as np

from workers import simulation as engine

DEFAULT_SIZES = (100, 1000)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--agents", type=int, nargs="+", default=list(DEFAULT_SIZES), help="population sizes (default 100 1000)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=4.0,
        help="about how long the plain-Python side runs per size; its rounds are chosen from a probe (default 4)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="vectorised runs per size; the best counts (default 3)")
    parser.add_argument("--seed", type=int, default=7)


def bench_input(agents: int, rounds: int, seed: int, topology: str = "all_pairs") -> engine.SimulationInput:
    rng = np.random.default_rng(seed)
    traits = rng.uniform(0.0, 1.0, size=(agents, len(engine.TRAITS)))
    centres = rng.normal(size=(8, 64))
    vectors = centres[rng.integers(0, 8, size=agents)] + 0.7 * rng.normal(size=(agents, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = np.clip(vectors @ vectors.T, -1.0, 1.0)
    np.fill_diagonal(similarity, 0.0)
    names = [f"agent-{i}" for i in range(agents)]
    spec = engine.validate_spec(
        {
            "rounds": rounds,
            "topology": {"type": topology},
            "events": [{"round": max(1, rounds // 2), "type": "set_parameter", "parameter": "noise", "value": 0.2}],
        }
    )
    return engine.SimulationInput(
        agent_names=names,
        traits=engine.traits_matrix([dict(zip(engine.TRAITS, row, strict=True)) for row in traits]),
        memory_similarity=similarity,
        spec=spec,
        seed=seed,
    )


def _timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - started, value


def measure(agents: int, *, seconds: float, repeats: int, seed: int) -> dict:
    # Rounds from a probe of the slow side (1 and 3 rounds: the difference leaves out its
    # set-up), so that each size takes about `seconds`.
    one_s, _ = _timed(engine.run_reference, bench_input(agents, 1, seed))
    three_s, _ = _timed(engine.run_reference, bench_input(agents, 3, seed))
    per_round_s = max((three_s - one_s) / 2, one_s / 10, 1e-6)
    rounds = int(min(2000, max(3, seconds / per_round_s)))
    run_input = bench_input(agents, rounds, seed)
    reference_s, reference_metrics = _timed(engine.run_reference, run_input)
    vectorised_s = float("inf")
    for _ in range(repeats):
        elapsed, result = _timed(engine.run_simulation, run_input)
        vectorised_s = min(vectorised_s, elapsed)
    agree = all(
        np.allclose(result.metrics[name], reference_metrics[name], rtol=1e-9, atol=1e-9) for name in engine.METRICS
    )
    steps = agents * rounds
    return {
        "agents": agents,
        "rounds": rounds,
        "reference_steps_per_s": steps / reference_s,
        "vectorised_steps_per_s": steps / vectorised_s,
        "speedup": reference_s / vectorised_s,
        "agree": agree,
    }


def run(stdout, *, agents, seconds, repeats, seed, **_options) -> None:
    stdout.write(
        "simulation engine, all-pairs topology: vectorised (numpy) vs plain Python, same rules, same random draws"
    )
    stdout.write(f"{'agents':>7} {'rounds':>7} {'python steps/s':>15} {'numpy steps/s':>14} {'speedup':>8}  agree")
    rows = []
    for size in agents:
        row = measure(size, seconds=seconds, repeats=repeats, seed=seed)
        rows.append(row)
        stdout.write(
            f"{row['agents']:>7} {row['rounds']:>7} {row['reference_steps_per_s']:>15,.0f} "
            f"{row['vectorised_steps_per_s']:>14,.0f} {row['speedup']:>7.1f}x  {'yes' if row['agree'] else 'NO'}"
        )
    if not all(row["agree"] for row in rows):
        stdout.write("the two implementations disagree: the speed-up compares different models")
    stdout.write(
        " ".join(f"speedup_{row['agents']}={row['speedup']:.1f}" for row in sorted(rows, key=lambda r: -r["agents"]))
    )
