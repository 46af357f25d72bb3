"""`manage.py audit`: the organization's audit trail, newest first."""

import json

from django.core.management.base import BaseCommand

from apps.accounts.cli import add_actor_arguments, resolve_membership, usage_error
from apps.accounts.selectors import audit_list
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = "Print security-relevant actions (tokens, roles, promotions, other people's jobs), newest first."

    def add_arguments(self, parser):
        add_actor_arguments(parser)
        parser.add_argument("--action", help="only this action, e.g. token.created or member.role_changed")
        parser.add_argument("--limit", type=int, default=50, help="at most this many events (default 50)")

    def handle(self, *args, **options):
        try:
            events = audit_list(membership=resolve_membership(options))
        except DomainError as exc:
            raise usage_error(exc) from exc
        if options["action"]:
            events = events.filter(action=options["action"])
        for event in events[: max(options["limit"], 0)]:
            actor = event.actor.username if event.actor else "-"
            self.stdout.write(
                f"{event.created_at:%Y-%m-%d %H:%M:%S}  {actor:16} {event.action:22} "
                f"{event.target_type}:{event.target_id}  {json.dumps(event.details, sort_keys=True)}"
            )
