"""`manage.py queues list|pause|resume`: the job queues' run-time switch (platform operators)."""

from django.core.management.base import BaseCommand

from apps.accounts.cli import add_user_argument, resolve_superuser, usage_error
from apps.core.errors import DomainError
from apps.jobs import selectors, services


class Command(BaseCommand):
    help = (
        "List the job queues (paused or not, jobs waiting), or pause/resume one: while paused no job of it is "
        "claimed, queued jobs wait and none is lost. Pausing and resuming need --as a superuser and are audited."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="every job queue: paused or running, and how many jobs wait in it")
        pause = sub.add_parser("pause", help="stop claims from a queue (running jobs go on)")
        pause.add_argument("queue", help=f"one of: {', '.join(services.PAUSABLE_QUEUES)}")
        pause.add_argument("--reason", default="", help="shown to users as their jobs' wait reason (200 chars)")
        resume = sub.add_parser("resume", help="claim from a paused queue again")
        resume.add_argument("queue", help=f"one of: {', '.join(services.PAUSABLE_QUEUES)}")
        for action in (pause, resume):
            add_user_argument(action)

    def handle(self, *args, action, **options):
        if action == "list":
            self.stdout.write(f"{'QUEUE':10} {'STATE':8} {'QUEUED':>7}  REASON")
            for queue in selectors.queue_list():
                state = "paused" if queue["paused"] else "running"
                self.stdout.write(f"{queue['name']:10} {state:8} {queue['queued']:>7}  {queue['reason']}")
            return
        actor = resolve_superuser(options)
        try:
            state = services.queue_set_paused(
                queue=options["queue"], paused=action == "pause", actor=actor, reason=options.get("reason", "")
            )
        except DomainError as exc:
            raise usage_error(exc) from exc
        self.stdout.write(f"{state.name}: {'paused' if state.paused else 'running'}")
