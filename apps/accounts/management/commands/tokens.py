"""`manage.py tokens create|list|revoke`: API tokens, shown once at creation and stored hashed."""

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from apps.accounts.cli import add_actor_arguments, resolve_membership, usage_error
from apps.accounts.permissions import SCOPES
from apps.accounts.selectors import token_get, token_list
from apps.accounts.services import api_token_create, api_token_revoke
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = "Create, list and revoke API tokens for a user's membership. The secret is printed once, at creation."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="create a token and print it once")
        create.add_argument("--name", required=True, help="what the token is for, e.g. 'ci'")
        create.add_argument("--expires-in-days", type=int, help="expiry (default: never)")
        create.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            choices=SCOPES,
            metavar="SCOPE",
            help=f"scope (repeatable; default '*'): {', '.join(SCOPES)}",
        )
        sub.add_parser("list", help="list tokens (never their secrets); owners and admins see every member's")
        revoke = sub.add_parser("revoke", help="revoke a token by its prefix")
        revoke.add_argument("prefix", help="the part after 'sy_' and before the next '_'")
        for action in sub.choices.values():
            add_actor_arguments(action)

    def handle(self, *args, action, **options):
        membership = resolve_membership(options)
        try:
            self._handle(action, membership, options)
        except DomainError as exc:
            raise usage_error(exc) from exc

    def _handle(self, action, membership, options):
        if action == "create":
            expires = options["expires_in_days"]
            issued = api_token_create(
                membership=membership,
                name=options["name"],
                scopes=options["scopes"],
                expires_at=timezone.now() + timedelta(days=expires) if expires else None,
            )
            self.stdout.write(issued.plaintext)
            self.stderr.write("Store it now: it cannot be shown again.")
        elif action == "list":
            for token in token_list(membership=membership):
                state = "active" if token.is_active else ("revoked" if token.revoked_at else "expired")
                self.stdout.write(
                    f"sy_{token.prefix}_…  {token.name:20} {token.membership.user.username:16} {state:8} "
                    f"scopes={','.join(token.scopes)} "
                    f"last_used={token.last_used_at or '-'}"
                )
        else:
            token = token_get(membership=membership, prefix=options["prefix"])
            api_token_revoke(token=token, actor=membership)
            self.stdout.write(f"revoked sy_{token.prefix}_…")
