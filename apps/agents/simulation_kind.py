"""The `simulation` and `simulation_sweep` job kinds: a seeded multi-agent run over a scenario, and a grid of them.

A run snapshots its scenario's validated spec and its agents at submit, so the params
say exactly what ran; the worker reads the agents' traits and their memories' centroids
(pgvector `avg`) once, then the engine in `workers/simulation.py` plays the rounds.
A sweep runs on `control`: it submits one child run per grid point and replication,
publishes them as one Celery group to `cpu`, and waits without holding a worker; when
the last child ends, `aggregate_sweep_children` (also on `control`) makes the table and
the chart (see apps/jobs/services/fanout.py).
"""

import hashlib
import itertools
import secrets
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import OperationalError, connection
from rest_framework import serializers

from apps.core.artifact_storage import TRANSIENT_STORAGE_ERRORS
from apps.jobs.kinds import AwaitChildren, JobKind, PermanentJobError
from project import queues
from workers import simulation as engine

SEED_MAX = 2**63 - 1
SWEEP_METRICS = ("mean_affinity", "cohesion", "conflicts", "cooperation_rate")


def _spec_errors(exc: engine.SpecError, prefix: str) -> dict:
    return {f"{prefix}.{path}": messages for path, messages in exc.errors.items()}


def _overrides_problems(overrides: dict, field: str) -> dict:
    problems = {}
    for name, value in overrides.items():
        parameter = engine.PARAMETERS.get(name)
        if parameter is None:
            problems[f"{field}.{name}"] = [f"Unknown parameter. Known: {', '.join(sorted(engine.PARAMETERS))}."]
        elif not parameter.minimum <= value <= parameter.maximum:
            problems[f"{field}.{name}"] = [f"Must be from {parameter.minimum} to {parameter.maximum}, not {value}."]
    return problems


class _RunParams(serializers.Serializer):
    """What a run and a sweep share: the scenario, the agents, the seed."""

    scenario_id = serializers.IntegerField(min_value=1, help_text="The scenario (its spec is recorded at submit).")
    agent_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        min_length=2,
        required=False,
        help_text="The agents taking part (default: every agent of the organization, at most SIMULATION_MAX_AGENTS).",
    )
    seed = serializers.IntegerField(
        min_value=0, max_value=SEED_MAX, required=False, help_text="Default: drawn at submit and recorded here."
    )
    # Filled in at submit: what exactly will run.
    scenario_name = serializers.CharField(required=False)
    spec = serializers.JSONField(required=False)

    def validate(self, attrs):
        from apps.agents.models import Agent, Scenario

        organization = self.context["membership"].organization
        scenario = Scenario.objects.filter(pk=attrs["scenario_id"], organization=organization).first()
        if scenario is None:
            raise serializers.ValidationError({"scenario_id": ["No such scenario."]})
        agents = Agent.objects.filter(organization=organization)
        if "agent_ids" in attrs:
            wanted = sorted(set(attrs["agent_ids"]))
            found = dict(agents.filter(pk__in=wanted).values_list("pk", "name"))
            missing = [pk for pk in wanted if pk not in found]
            if missing:
                raise serializers.ValidationError({"agent_ids": [f"No such agents: {missing[:20]}."]})
        else:
            found = dict(agents.order_by("pk").values_list("pk", "name")[: settings.SIMULATION_MAX_AGENTS + 1])
            wanted = sorted(found)
        if len(wanted) < 2:
            raise serializers.ValidationError({"agent_ids": ["A simulation needs at least 2 agents."]})
        if len(wanted) > settings.SIMULATION_MAX_AGENTS:
            raise serializers.ValidationError({"agent_ids": [f"At most {settings.SIMULATION_MAX_AGENTS} agents."]})
        try:
            spec = engine.validate_spec(scenario.spec)
            engine.check_spec_agents(spec, [found[pk] for pk in wanted])
        except engine.SpecError as exc:
            # The stored spec was valid when saved; what fails here is its fit with these agents.
            raise serializers.ValidationError(_spec_errors(exc, "scenario")) from exc
        attrs.update(
            agent_ids=wanted,
            seed=attrs["seed"] if attrs.get("seed") is not None else secrets.randbelow(2**31),
            scenario_name=scenario.name,
            spec=spec,
        )
        return attrs


class SimulationParams(_RunParams):
    overrides = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        default=dict,
        help_text='Parameter values replacing the scenario\'s, e.g. {"learning_rate": 0.2}.',
    )
    sweep_point = serializers.JSONField(
        required=False, help_text="Set by a sweep for its children: {index, replication}."
    )

    class Meta:
        ref_name = "SimulationParams"

    def validate(self, attrs):
        problems = _overrides_problems(attrs.get("overrides") or {}, "overrides")
        if problems:
            raise serializers.ValidationError(problems)
        return super().validate(attrs)


class SweepParams(_RunParams):
    grid = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(), min_length=1, max_length=50),
        help_text='Parameter -> the values to try, e.g. {"learning_rate": [0.05, 0.1, 0.2]}; 1 to 3 parameters.',
    )
    replications = serializers.IntegerField(
        min_value=1, max_value=100, default=3, help_text="Runs per grid point; replication r runs with seed + r."
    )
    chart_metric = serializers.ChoiceField(
        choices=SWEEP_METRICS, default="cohesion", help_text="The metric the sweep's chart shows."
    )
    children = serializers.IntegerField(required=False, help_text="Filled in at submit: grid points x replications.")

    class Meta:
        ref_name = "SimulationSweepParams"

    def validate(self, attrs):
        grid = attrs["grid"]
        if not 1 <= len(grid) <= 3:
            raise serializers.ValidationError({"grid": ["Sweep 1 to 3 parameters."]})
        problems = {}
        for name, values in grid.items():
            for value in values:
                for field, messages in _overrides_problems({name: value}, "grid").items():
                    problems.setdefault(field, []).extend(messages)
            if len(set(values)) != len(values):
                problems.setdefault(f"grid.{name}", []).append("Values repeat.")
        if problems:
            raise serializers.ValidationError(problems)
        children = int(np.prod([len(values) for values in grid.values()])) * attrs["replications"]
        if children > settings.SIMULATION_SWEEP_MAX_CHILDREN:
            limit = settings.SIMULATION_SWEEP_MAX_CHILDREN
            message = f"{children} runs (grid points x replications); at most {limit} (SIMULATION_SWEEP_MAX_CHILDREN)."
            raise serializers.ValidationError({"grid": [message]})
        attrs["children"] = children
        return super().validate(attrs)


# --- run ---------------------------------------------------------------------------------


def memory_similarity(agent_ids: list[int], fallback: dict[int, list[float] | None]) -> np.ndarray:
    """Cosine similarity of the agents' memory centroids, averaged by pgvector in one query.

    An agent without memories is represented by its own embedding, if it has one; an agent
    with neither has similarity 0 to everyone.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT agent_id, avg(embedding)::real[] FROM agents_memory WHERE agent_id = ANY(%s) GROUP BY agent_id",
            [agent_ids],
        )
        centroids = dict(cursor.fetchall())
    vectors = np.zeros((len(agent_ids), settings.AGENTS_EMBEDDING_DIM), dtype=np.float64)
    for row, agent_id in enumerate(agent_ids):
        vector = centroids.get(agent_id)
        if vector is None:
            vector = fallback.get(agent_id)
        if vector is not None:
            vectors[row] = vector
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    units = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    similarity = np.clip(units @ units.T, -1.0, 1.0)
    np.fill_diagonal(similarity, 0.0)
    return similarity


def _workdir(job_id, attempt: int):
    from apps.jobs.services import job_output_workdir

    return job_output_workdir(job_id=job_id, attempt=attempt)


def _add_artifact(context_job_id, attempt: int, path: Path, content_type: str) -> None:
    from apps.jobs.runner import LeaseLost
    from apps.jobs.services import job_artifact_add

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not job_artifact_add(
        job_id=context_job_id,
        attempt=attempt,
        path=path,
        name=path.name,
        sha256=digest.hexdigest(),
        content_type=content_type,
    ):
        raise LeaseLost()


def _execute_simulation(context) -> dict:
    from apps.agents.models import Agent
    from workers.simulation_charts import render_run_chart

    params = context.params
    agents = list(
        Agent.objects.filter(organization_id=context.organization_id, pk__in=params["agent_ids"])
        .order_by("pk")
        .values("pk", "name", "traits", "embedding")
    )
    if len(agents) != len(params["agent_ids"]):
        missing = sorted(set(params["agent_ids"]) - {agent["pk"] for agent in agents})
        raise PermanentJobError(
            "agents_missing", f"{len(missing)} agents were deleted after submit.", {"agent_ids": missing[:50]}
        )
    ids = [agent["pk"] for agent in agents]
    names = [agent["name"] for agent in agents]
    run_input = engine.SimulationInput(
        agent_names=names,
        traits=engine.traits_matrix([agent["traits"] for agent in agents]),
        memory_similarity=memory_similarity(ids, {agent["pk"]: agent["embedding"] for agent in agents}),
        spec=params["spec"],
        seed=params["seed"],
        overrides=params.get("overrides") or {},
    )
    started = time.perf_counter()
    try:
        result = engine.run_simulation(
            run_input, report_progress=context.report_progress, raise_if_cancelled=context.raise_if_cancelled
        )
    except engine.SpecError as exc:
        raise PermanentJobError("invalid_spec", str(exc), {"fields": exc.errors}) from exc
    elapsed = time.perf_counter() - started

    with _workdir(context.job_id, context.attempt) as workdir:
        arrays = workdir / "results.npz"
        np.savez(
            arrays,
            agent_ids=np.asarray(ids, dtype=np.int64),
            compatibility=result.compatibility,
            affinity=result.affinity,
            interactions=result.interactions,
            **{f"metric_{name}": series for name, series in result.metrics.items()},
        )
        chart = workdir / "chart.png"
        render_run_chart(result, names, chart, title=f"{params['scenario_name']} · seed {params['seed']}")
        _add_artifact(context.job_id, context.attempt, arrays, "application/x-npz")
        _add_artifact(context.job_id, context.attempt, chart, "image/png")

    summary = engine.summarize(result, names)
    inline = len(ids) <= 50
    return {
        "scenario": {"id": params["scenario_id"], "name": params["scenario_name"]},
        "seed": params["seed"],
        "overrides": params.get("overrides") or {},
        "agent_ids": ids,
        **summary,
        "agent_steps": len(ids) * result.rounds_run,
        "agent_steps_per_s": round(len(ids) * result.rounds_run / elapsed, 1) if elapsed > 0 else None,
        # Small runs carry their matrix here; every run has it in results.npz.
        "compatibility": np.round(result.compatibility, 6).tolist() if inline else None,
    }


SIMULATION = JobKind(
    name="simulation",
    description="A seeded multi-agent simulation of a scenario over a set of agents: metrics per round, "
    "pairwise compatibility, notable interactions, a chart.",
    params_serializer=SimulationParams,
    execute=_execute_simulation,
    pick_queue=lambda params: queues.CPU,
    soft_time_limit_s=3600,
    time_limit_s=3660,
    # A run writes nothing but its own artifacts (fenced by the attempt): safe to retry.
    transient_errors=(OperationalError, *TRANSIENT_STORAGE_ERRORS),
)


# --- sweep -------------------------------------------------------------------------------


def sweep_points(grid: dict[str, list[float]], replications: int) -> list[tuple[dict, int]]:
    """Every (overrides, replication) of a sweep, in a fixed order: the children's keys."""
    names = sorted(grid)
    return [
        (dict(zip(names, values, strict=True)), replication)
        for values in itertools.product(*(grid[name] for name in names))
        for replication in range(replications)
    ]


def _execute_sweep(context) -> AwaitChildren:
    from apps.core.errors import DomainError
    from apps.jobs.runner import LeaseLost
    from apps.jobs.services import job_children_submit

    params = context.params
    children = [
        {
            "kind": "simulation",
            "key": f"point-{index}",
            "params": {
                "scenario_id": params["scenario_id"],
                "agent_ids": params["agent_ids"],
                # The same seeds at every grid point (common random numbers): differences
                # between points come from the parameters, not from luck.
                "seed": (params["seed"] + replication) % (SEED_MAX + 1),
                "overrides": overrides,
                "sweep_point": {"index": index, "replication": replication},
            },
        }
        for index, (overrides, replication) in enumerate(sweep_points(params["grid"], params["replications"]))
    ]
    try:
        total, queued = job_children_submit(parent_id=context.job_id, attempt=context.attempt, children=children)
    except LookupError as exc:
        raise LeaseLost() from exc
    except DomainError as exc:
        # The scenario or the agents changed since the sweep was submitted.
        raise PermanentJobError("children_refused", exc.message, {"fields": exc.fields}) from exc
    context.report_progress(0.0, f"{queued} of {total} children queued")
    return AwaitChildren(children=total)


def aggregate_sweep_children(parent, children: list) -> dict:
    """The sweep's table (mean and spread per grid point) and chart, from its children's results."""
    from apps.jobs.models import JobStatus
    from workers.simulation_charts import render_sweep_chart

    params = parent.params
    points, failed = [], []
    counts = {"total": len(children), "succeeded": 0, "failed": 0, "cancelled": 0}
    for child in children:
        point = child.params.get("sweep_point") or {}
        if child.status == JobStatus.SUCCEEDED:
            counts["succeeded"] += 1
            points.append(
                {
                    "overrides": child.params["overrides"],
                    "replication": point.get("replication", 0),
                    "final": child.result["final"],
                }
            )
            continue
        counts["failed" if child.status == JobStatus.FAILED else "cancelled"] += 1
        failed.append(
            {
                "job_id": str(child.pk),
                "status": child.status,
                "overrides": child.params.get("overrides"),
                "replication": point.get("replication"),
                "error": {key: (child.error or {}).get(key) for key in ("code", "message")},
            }
        )
    result = {
        "scenario": {"id": params["scenario_id"], "name": params["scenario_name"]},
        "grid": params["grid"],
        "replications": params["replications"],
        "seed": params["seed"],
        "children": counts,
        "failed_children": failed,
        "chart_metric": params["chart_metric"],
        "table": [],
    }
    if not points:
        raise PermanentJobError(
            "all_children_failed", f"None of the {len(children)} runs succeeded.", {"result": result}
        )
    rows = engine.aggregate_sweep(points, metrics=SWEEP_METRICS)
    result["table"] = rows
    with _workdir(parent.pk, parent.attempt) as workdir:
        chart = workdir / "sweep.png"
        render_sweep_chart(rows, chart, metric=params["chart_metric"], title=f"{params['scenario_name']} sweep")
        _add_artifact(parent.pk, parent.attempt, chart, "image/png")
    return result


SIMULATION_SWEEP = JobKind(
    name="simulation_sweep",
    description="A grid of simulation runs over scenario parameters, with replications: child jobs on cpu "
    "hosts, aggregated on control into a table (mean and spread per grid point) and a chart.",
    params_serializer=SweepParams,
    execute=_execute_sweep,
    pick_queue=lambda params: queues.CONTROL,
    soft_time_limit_s=300,
    time_limit_s=360,
    # Children are keyed per parent: a second attempt finds them instead of making more.
    transient_errors=(OperationalError, *TRANSIENT_STORAGE_ERRORS),
    aggregate=aggregate_sweep_children,
)
