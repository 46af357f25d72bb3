"""`manage.py scenarios create|list|show|update|delete|run|sweep|runs`: scenarios and their simulations."""

import json
import sys

from django.core.management.base import CommandError

from apps.accounts.cli import USAGE_ERROR, MemberCommand, add_actor_arguments
from apps.agents import selectors, services
from apps.agents.models import Scenario
from apps.agents.simulation_kind import SWEEP_METRICS
from apps.jobs.cli import EXIT_CODES, load_json_argument, print_outcome, wait_for_job
from workers.simulation import METRICS, PARAMETERS


class Command(MemberCommand):
    help = (
        "Scenarios (rounds, topology, parameters, events) and their simulation runs and parameter sweeps. "
        "`run` and `sweep` submit jobs; with --wait they show a progress bar and exit with the outcome: "
        "0 succeeded, 1 failed, 3 cancelled, 4 --timeout; 2 means the command was used wrongly "
        "(an invalid spec names its field)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        create = sub.add_parser("create", help="save a scenario (its spec is validated)")
        create.add_argument("name")
        create.add_argument("--spec", required=True, help="the spec as JSON, or @path/to/spec.json")
        create.add_argument("--description", default="")

        update = sub.add_parser("update", help="change a scenario's spec, name or description")
        update.add_argument("scenario", help="scenario id or name")
        update.add_argument("--spec", help="the new spec as JSON, or @path/to/spec.json")
        update.add_argument("--name")
        update.add_argument("--description")

        sub.add_parser("list", help="the organization's scenarios")

        show = sub.add_parser("show", help="a scenario with its normalised spec")
        show.add_argument("scenario", help="scenario id or name")

        delete = sub.add_parser("delete", help="delete a scenario (past runs keep the spec they recorded)")
        delete.add_argument("scenario", help="scenario id or name")

        run = sub.add_parser("run", help="submit one simulation run of a scenario")
        run.add_argument("scenario", help="scenario id or name")
        self._add_run_arguments(run)
        run.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"override a parameter (repeatable); parameters: {', '.join(sorted(PARAMETERS))}",
        )

        sweep = sub.add_parser("sweep", help="submit a parameter sweep: one child run per grid point and replication")
        sweep.add_argument("scenario", help="scenario id or name")
        sweep.add_argument(
            "--grid", required=True, help="parameter -> values as JSON, e.g. '{\"learning_rate\": [0.05, 0.1]}'"
        )
        sweep.add_argument("--replications", type=int, default=3, help="runs per grid point (default 3)")
        sweep.add_argument("--chart-metric", choices=SWEEP_METRICS, help="the metric the chart shows")
        self._add_run_arguments(sweep)

        runs = sub.add_parser("runs", help="a scenario's runs and sweeps, newest first")
        runs.add_argument("scenario", help="scenario id or name")
        runs.add_argument("--limit", type=int, default=20)

        for action in sub.choices.values():
            add_actor_arguments(action)

    @staticmethod
    def _add_run_arguments(parser) -> None:
        parser.add_argument("--agents", help="comma-separated agent ids (default: every agent of the organization)")
        parser.add_argument("--seed", type=int, help="random seed (default: drawn and recorded in the job)")
        parser.add_argument("--priority", type=int, default=5, help="0 (least urgent) to 9 (most urgent)")
        parser.add_argument("--wait", action="store_true", help="wait with a progress bar; exit with the outcome")
        parser.add_argument("--timeout", type=float, help="with --wait: give up after N seconds")

    # -- scenarios --

    def _create(self, membership, options):
        scenario = services.scenario_create(
            membership=membership,
            name=options["name"],
            spec=load_json_argument(options["spec"], "--spec"),
            description=options["description"],
        )
        self.stdout.write(f"scenario {scenario.pk} {scenario.name}: {_describe(scenario)}")

    def _update(self, membership, options):
        scenario = services.scenario_update(
            membership=membership,
            scenario=self._scenario(membership, options["scenario"]),
            name=options["name"],
            spec=load_json_argument(options["spec"], "--spec") if options["spec"] else None,
            description=options["description"],
        )
        self.stdout.write(f"scenario {scenario.pk} {scenario.name}: {_describe(scenario)}")

    def _list(self, membership, options):
        self.stdout.write(f"{'ID':>5}  {'NAME':30} DESCRIPTION")
        for scenario in selectors.scenario_list(membership=membership):
            self.stdout.write(f"{scenario.pk:>5}  {scenario.name:30} {_describe(scenario)}")

    def _show(self, membership, options):
        scenario = self._scenario(membership, options["scenario"])
        data = {"id": scenario.pk, "name": scenario.name, "description": scenario.description, "spec": scenario.spec}
        self.stdout.write(json.dumps(data, indent=2))

    def _delete(self, membership, options):
        scenario = self._scenario(membership, options["scenario"])
        services.scenario_delete(membership=membership, scenario=scenario)
        self.stdout.write(f"deleted scenario {options['scenario']}")

    # -- runs --

    def _run(self, membership, options):
        job, _ = services.simulation_submit(
            membership=membership,
            scenario=self._scenario(membership, options["scenario"]),
            agent_ids=_agent_ids(options["agents"]),
            seed=options["seed"],
            overrides=_overrides(options["overrides"]),
            priority=options["priority"],
        )
        self.stdout.write(
            f"submitted {job.id} (simulation of {len(job.params['agent_ids'])} agents, seed {job.params['seed']})"
        )
        self._maybe_wait(job, options)

    def _sweep(self, membership, options):
        grid = load_json_argument(options["grid"], "--grid")
        job, _ = services.sweep_submit(
            membership=membership,
            scenario=self._scenario(membership, options["scenario"]),
            grid=grid,
            replications=options["replications"],
            agent_ids=_agent_ids(options["agents"]),
            seed=options["seed"],
            chart_metric=options["chart_metric"],
            priority=options["priority"],
        )
        self.stdout.write(
            f"submitted {job.id} (sweep of {job.params['children']} runs, base seed {job.params['seed']})"
        )
        self._maybe_wait(job, options)

    def _runs(self, membership, options):
        scenario = self._scenario(membership, options["scenario"])
        self.stdout.write(f"{'ID':36}  {'KIND':16} {'STATUS':10} {'PROG':>5}  {'SEED':>10}  CREATED")
        for job in selectors.scenario_runs(membership=membership, scenario=scenario).order_by("-created_at")[
            : options["limit"]
        ]:
            self.stdout.write(
                f"{job.id}  {job.kind:16} {job.status:10} {round(job.progress * 100):>4}%  "
                f"{job.params.get('seed', '-'):>10}  {job.created_at:%Y-%m-%d %H:%M:%S}"
            )

    def _maybe_wait(self, job, options) -> None:
        if not options["wait"]:
            return
        job = wait_for_job(job, options["timeout"])
        print_outcome(self, job, result=False)
        if job.result:
            self.stdout.write(_result_text(job.result))
        sys.exit(EXIT_CODES.get(job.status, 1))

    def _scenario(self, membership, reference: str) -> Scenario:
        if reference.isdigit():
            return selectors.scenario_get(membership=membership, scenario_id=reference)
        scenario = selectors.scenario_list(membership=membership).filter(name=reference).first()
        if scenario is None:
            raise CommandError(f"scenario: no scenario named '{reference}'", returncode=USAGE_ERROR)
        return scenario


def _describe(scenario: Scenario) -> str:
    spec = scenario.spec
    return f"{spec['rounds']} rounds, {spec['topology']['type']} topology, {len(spec.get('events') or [])} events" + (
        f" - {scenario.description}" if scenario.description else ""
    )


def _agent_ids(raw: str | None) -> list[int] | None:
    if not raw:
        return None
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise CommandError(f"--agents: comma-separated ids, not {raw!r}", returncode=USAGE_ERROR) from exc


def _overrides(pairs: list[str]) -> dict[str, float]:
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError as exc:
            raise CommandError(f"--set: NAME=NUMBER, not {pair!r}", returncode=USAGE_ERROR) from exc
    return overrides


def _result_text(result: dict) -> str:
    """The outcome as a person reads it: final metrics and pairs for a run, the table for a sweep."""
    lines = []
    if "table" in result:
        counts = result["children"]
        lines.append(
            f"{counts['succeeded']}/{counts['total']} runs succeeded"
            + (
                f", {counts['failed']} failed, {counts['cancelled']} cancelled"
                if len(result["failed_children"])
                else ""
            )
        )
        for row in result["table"]:
            point = " ".join(f"{name}={value:g}" for name, value in row["overrides"].items())
            stats = "  ".join(
                f"{name} {row['mean'][name]:.3f}±{row['std'][name]:.3f}" for name in ("cohesion", "mean_affinity")
            )
            lines.append(f"  {point:30} n={row['replications']:<3} {stats}")
        for child in result["failed_children"][:10]:
            lines.append(f"  failed {child['job_id'][:8]} {child['overrides']}: {child['error'].get('message')}")
        return "\n".join(lines)
    final = result.get("final", {})
    # jsonb keeps keys in its own order; print them in the engine's.
    lines.append("final: " + ", ".join(f"{name} {final[name]:g}" for name in METRICS if name in final))
    for label, key in (("strongest", "strongest_pairs"), ("weakest", "weakest_pairs")):
        pairs = result.get(key) or []
        lines.append(f"{label}: " + "; ".join(f"{p['a']}-{p['b']} {p['compatibility']:.3f}" for p in pairs[:3]))
    for line in (result.get("transcript") or [])[:5]:
        lines.append(f"  {line['text']}")
    return "\n".join(lines)
