"""`manage.py bench KIND`: benchmarks that measure against a baseline in the same run."""

import logging

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BENCHMARKS = {
    "jobs": ("apps.jobs.bench", "the job path vs a raw Celery no-op task on the same broker"),
    "bulk": ("apps.jobs.bench_bulk", "one bulk submit of N jobs vs N single submits"),
    "fairness": (
        "apps.jobs.bench_fairness",
        "a latecomer's queue wait behind another organization's flood vs first-in-first-out; shares by weight",
    ),
    "prune": (
        "apps.jobs.bench_prune",
        "the job path's p99 submit-to-finish latency while a prune of 100k finished jobs runs vs without",
    ),
    "sandbox": ("apps.jobs.bench_sandbox", "a sandboxed print(1) vs a bare interpreter start; sandbox runs/s"),
    "vectors": ("apps.agents.bench", "pgvector HNSW search vs an exact numpy ranking: recall@10, latency, build time"),
    "compile": ("apps.registry.bench_compile", "int8, optimised and fp16 compiles vs the fp32 source on CPU"),
    "inference": ("apps.registry.bench_inference", "inference rows/s through the job path vs a bare session.run loop"),
    "simulation": (
        "apps.agents.bench_simulation",
        "agent-steps/s of the vectorised engine vs plain Python, same rules",
    ),
}


class Command(BaseCommand):
    help = (
        "Run a benchmark against its baseline, measured in the same run on this machine. "
        "The last line printed is a key=value summary for scripts. Benchmarks: "
        + "; ".join(f"{name}: {text}" for name, (_, text) in BENCHMARKS.items())
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
        for name, (module, text) in BENCHMARKS.items():
            bench_parser = sub.add_parser(name, help=text)
            __import__(module, fromlist=["add_arguments"]).add_arguments(bench_parser)

    def handle(self, *args, benchmark, **options):
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            raise CommandError("the database is not migrated: run `manage.py migrate` first", returncode=2)
        module = __import__(BENCHMARKS[benchmark][0], fromlist=["run"])
        # call_command(..., stdout=...) puts stdout/stderr among the options as well.
        options = {key: value for key, value in options.items() if key not in ("stdout", "stderr")}
        root = logging.getLogger()
        level = root.level
        if options["verbosity"] < 2:
            # The benchmarks' workers log at WARNING; the measuring process does the same, so
            # per-job INFO lines neither interleave with the figures nor cost only one side.
            root.setLevel(logging.WARNING)
        try:
            module.run(self.stdout, **options)
        finally:
            root.setLevel(level)
