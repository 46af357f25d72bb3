"""`manage.py chaos`: fault drills against the running stack; exit 1 if a job was lost, doubled, stuck or run twice."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR
from apps.operations import chaos


class Command(BaseCommand):
    help = (
        "Run the job contract's fault drills against this stack (its database, broker and workers on this host). "
        "Each drill submits its own cheap jobs in the `chaos` organization, injects one fault, waits for them to "
        "settle and prints how many were lost, doubled, stuck or run twice, and the time to settle. Drills: "
        "kill (SIGKILL the cpu workers' pool processes), kill-mains (their main processes too: needs a process "
        "manager that restarts them, as `make run` has), flush (empty the broker), pg-restart (kill -9 and "
        "restart the embedded PostgreSQL), two-beats (a second beat meanwhile), partition (cut every cpu host's "
        "network cable for --partition-seconds, then mend it: only where the multi-host test harness set up "
        "hosts in network namespaces, named by CHAOS_NETNS_TOPOLOGY; skipped elsewhere, saying why). flush, "
        "pg-restart, kill-mains and partition disturb other work on the stack and need --destructive. Exit 0 when "
        "every invariant held, 1 when one broke, 2 for a usage error."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--drills",
            default="kill,two-beats",
            help=f"comma-separated, in order (default kill,two-beats); any of: {', '.join(chaos.DRILLS)}",
        )
        parser.add_argument("--jobs", type=int, default=40, help="jobs per drill (default 40)")
        parser.add_argument("--duration", type=float, default=0.2, help="seconds each job sleeps (default 0.2)")
        parser.add_argument(
            "--settle-timeout",
            type=float,
            default=None,
            help="seconds a drill may take to settle (default: the lease + 90 s)",
        )
        parser.add_argument(
            "--partition-seconds",
            type=float,
            default=10.0,
            help="how long the partition drill keeps the cables cut (default 10; longer than the lease makes "
            "the reaper take the jobs back)",
        )
        parser.add_argument(
            "--destructive", action="store_true", help="allow flush, pg-restart, kill-mains and partition"
        )

    def handle(self, *args, **options):
        drills = [name.strip() for name in options["drills"].split(",") if name.strip()]
        unknown = [name for name in drills if name not in chaos.DRILLS]
        if unknown or not drills:
            raise CommandError(
                f"--drills: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(chaos.DRILLS)}",
                returncode=USAGE_ERROR,
            )
        refused = sorted(set(drills) & chaos.DESTRUCTIVE)
        if refused and not options["destructive"]:
            raise CommandError(
                f"--drills: {', '.join(refused)} disturb other work on this stack; add --destructive to run them",
                returncode=USAGE_ERROR,
            )
        if not 1 <= options["jobs"] <= 1000:
            raise CommandError("--jobs: 1 to 1000", returncode=USAGE_ERROR)
        if not 0 < options["partition_seconds"] <= 3600:
            raise CommandError("--partition-seconds: more than 0, at most 3600", returncode=USAGE_ERROR)
        settle = options["settle_timeout"] or settings.JOBS_LEASE_SECONDS + 90
        self.stdout.write(f"{'DRILL':11} {'JOBS':>5} {'LOST':>5} {'DOUBLED':>8} {'STUCK':>6} {'RAN TWICE':>10} SETTLED")
        outcomes = []
        for name in drills:
            self.stderr.write(f"{name}: submitting {options['jobs']} jobs and injecting the fault ...")
            outcome = chaos.run_drill(
                name,
                jobs=options["jobs"],
                duration_s=options["duration"],
                settle_timeout_s=settle,
                partition_s=options["partition_seconds"],
            )
            outcomes.append(outcome)
            settled = "skipped" if outcome.skipped else (f"{outcome.settle_s} s" if outcome.settle_s else "no")
            self.stdout.write(
                f"{name:11} {outcome.jobs:>5} {outcome.lost:>5} {outcome.doubled:>8} {outcome.stuck:>6} "
                f"{outcome.ran_twice:>10} {settled}"
            )
            if outcome.skipped:
                self.stderr.write(f"{name}: skipped: {outcome.skipped}")
            elif outcome.note:
                self.stderr.write(f"{name}: {outcome.note}")
        broken = [outcome.drill for outcome in outcomes if not outcome.ok]
        if broken:
            self.stderr.write(f"invariants broken in: {', '.join(broken)}")
            raise SystemExit(1)
        self.stdout.write("every invariant held")
