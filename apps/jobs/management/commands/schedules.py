"""`manage.py schedules list|create|pause|resume|delete`: periodic jobs from the command line."""

from django.core.management.base import CommandError

from apps.accounts.cli import USAGE_ERROR, MemberCommand, add_actor_arguments
from apps.jobs import selectors, services
from apps.jobs.cli import load_json_argument
from apps.jobs.kinds import all_kinds
from apps.jobs.models import CatchUp, Schedule


class Command(MemberCommand):
    help = (
        "List, create, pause, resume and delete the organization's schedules: a job of KIND submitted as you "
        "on a cron expression (in --timezone) or every N seconds, exactly once per period however many beats "
        "run. Exit 0 on success, 2 when refused (bad params, no permission, unknown schedule)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="the organization's schedules: timing, next run, last outcome")

        create = sub.add_parser(
            "create", help="create a schedule; its job is checked now as `jobs submit` would check it"
        )
        create.add_argument("name", help="unique in the organization (1-100 characters)")
        create.add_argument("kind", help=f"job kind: {', '.join(sorted(all_kinds())) or 'see /api/v1/jobs/kinds/'}")
        when = create.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", help="5-field cron expression, e.g. '*/15 * * * *' (in --timezone)")
        when.add_argument("--every", type=int, metavar="SECONDS", help="an interval in seconds instead of --cron")
        create.add_argument("--params", default="{}", help="the job's parameters as JSON, or @path/to/file.json")
        create.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default UTC); DST-correct")
        create.add_argument(
            "--catch-up",
            choices=CatchUp.values,
            default=CatchUp.FIRE_ONCE,
            help="after missed periods (the dispatcher was down): fire_once (default) fires one job, skip none",
        )
        create.add_argument("--priority", type=int, default=5, help="the jobs' priority, 0-9 (default 5)")
        create.add_argument("--paused", action="store_true", help="create it paused (resume it later)")

        for name, text in (
            ("pause", "stop firing (nothing fires while paused)"),
            ("resume", "fire again, from the next period (missed periods are not fired)"),
            ("delete", "delete the schedule (the jobs it submitted stay)"),
        ):
            action = sub.add_parser(name, help=text)
            action.add_argument("schedule", help="schedule name or id")

        for action in sub.choices.values():
            add_actor_arguments(action)

    def _find(self, membership, ref: str) -> Schedule:
        schedules = selectors.schedule_list(membership=membership)
        found = schedules.filter(pk=int(ref)).first() if ref.isdigit() else None
        found = found or schedules.filter(name=ref).first()
        if found is None:
            raise CommandError(f"No such schedule: '{ref}'", returncode=USAGE_ERROR)
        return found

    def _list(self, membership, options):
        self.stdout.write(f"{'ID':>5}  {'NAME':24} {'KIND':12} {'EVERY':18} {'STATE':7} {'NEXT RUN':25} LAST")
        for schedule in selectors.schedule_list(membership=membership):
            state = "active" if schedule.enabled else "paused"
            next_run = schedule.next_run_at.isoformat(timespec="seconds") if schedule.next_run_at else "-"
            if schedule.last_error:
                last = f"refused: {schedule.last_error.get('code')}"
            else:
                last = f"job {str(schedule.last_job_id)[:8]}" if schedule.last_job_id else "-"
            self.stdout.write(
                f"{schedule.pk:>5}  {schedule.name[:24]:24} {schedule.kind:12} {schedule.every[:18]:18} "
                f"{state:7} {next_run:25} {last}"
            )

    def _create(self, membership, options):
        schedule = services.schedule_create(
            membership=membership,
            name=options["name"],
            kind=options["kind"],
            params=load_json_argument(options["params"], "--params"),
            cron=options["cron"] or "",
            interval_seconds=options["every"],
            timezone=options["timezone"],
            catch_up=options["catch_up"],
            priority=options["priority"],
            enabled=not options["paused"],
        )
        self.stdout.write(f"schedule {schedule.pk} {schedule.name}: next run {schedule.next_run_at or 'paused'}")

    def _pause(self, membership, options):
        schedule = self._find(membership, options["schedule"])
        services.schedule_update(actor=membership, schedule=schedule, enabled=False)
        self.stdout.write(f"schedule {schedule.pk} {schedule.name}: paused")

    def _resume(self, membership, options):
        schedule = self._find(membership, options["schedule"])
        schedule = services.schedule_update(actor=membership, schedule=schedule, enabled=True)
        self.stdout.write(f"schedule {schedule.pk} {schedule.name}: next run {schedule.next_run_at}")

    def _delete(self, membership, options):
        schedule = self._find(membership, options["schedule"])
        services.schedule_delete(actor=membership, schedule=schedule)
        self.stdout.write(f"schedule {options['schedule']}: deleted")
