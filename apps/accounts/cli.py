"""How management commands act as a user (`--as`), in an organization (`--org`) or as platform staff."""

import argparse
import contextlib
import os

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Invitation, Membership, User
from apps.core.errors import DomainError

USAGE_ERROR = 2


def add_verbosity_argument(parser) -> None:
    """`-v` after the action too (`jobs submit ... -v 2`), not only before it where Django puts it.

    SUPPRESS: given here it overrides Django's value, absent it leaves that value alone. manage.py
    reads the same option to pick the log level (0 errors, 1 warnings, 2 info, 3 debug).
    """
    # A command without sub-actions has Django's own -v on this very parser already.
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(
            "-v",
            "--verbosity",
            type=int,
            choices=[0, 1, 2, 3],
            default=argparse.SUPPRESS,
            help="0 errors only, 1 warnings (default), 2 info logs, 3 debug logs; logs go to stderr",
        )


def add_actor_arguments(parser) -> None:
    add_verbosity_argument(parser)
    parser.add_argument(
        "--as",
        dest="as_user",
        default=os.environ.get("SWITCHYARD_USER", "admin"),
        help="username to act as (default: $SWITCHYARD_USER, else 'admin'); permissions are that user's role",
    )
    parser.add_argument(
        "--org",
        default=os.environ.get("SWITCHYARD_ORG"),
        help="organization slug (default: $SWITCHYARD_ORG, else the user's first organization)",
    )


def add_user_argument(parser) -> None:
    """`--as` alone: for commands that act for a user, who may belong to no organization yet."""
    add_verbosity_argument(parser)
    parser.add_argument(
        "--as",
        dest="as_user",
        default=os.environ.get("SWITCHYARD_USER", "admin"),
        help="username to act as (default: $SWITCHYARD_USER, else 'admin')",
    )


def resolve_user(options) -> User:
    user = User.objects.filter(username=options["as_user"], is_active=True).first()
    if user is None:
        raise CommandError(f"--as: no active user '{options['as_user']}'", returncode=USAGE_ERROR)
    return user


def resolve_superuser(options) -> User:
    """The `--as` user, who must be an active superuser (platform staff creating tenants and logins)."""
    user = resolve_user(options)
    if not user.is_superuser:
        raise CommandError(
            f"--as: '{user.get_username()}' is not a superuser; only an active superuser may do this",
            returncode=USAGE_ERROR,
        )
    return user


def find_invitation(invitations, invitation_id: str) -> Invitation:
    """One invitation of `invitations` by its id or a unique prefix of it (at least 4 characters)."""
    matches = list(invitations.filter(id__startswith=invitation_id.lower())[:2]) if len(invitation_id) >= 4 else []
    if len(matches) != 1:
        reason = "No such invitation" if not matches else "Ambiguous invitation id"
        raise CommandError(f"{reason}: '{invitation_id}'", returncode=USAGE_ERROR)
    return matches[0]


def resolve_membership(options) -> Membership:
    memberships = Membership.objects.select_related("user", "organization").filter(
        user__username=options["as_user"], user__is_active=True
    )
    if options.get("org"):
        memberships = memberships.filter(organization__slug=options["org"])
    membership = memberships.order_by("created_at").first()
    if membership is None:
        where = f" in organization '{options['org']}'" if options.get("org") else ""
        raise CommandError(
            f"--as: no active user '{options['as_user']}' with a membership{where}", returncode=USAGE_ERROR
        )
    return membership


def usage_error(exc: DomainError) -> CommandError:
    """A refused request as the command's exit 2: each reason once, each field's on its own line.

    The message already names one field ("params.duration_s: must be ..."): that field is not
    listed again, only the others (the rest of a multi-field validation error).
    """
    others = {name: errors for name, errors in exc.fields.items() if not exc.message.startswith(f"{name}:")}
    fields = "".join(f"\n  {name}: {'; '.join(map(str, errors))}" for name, errors in others.items())
    return CommandError(f"{exc.message}{fields}", returncode=USAGE_ERROR)


class MemberCommand(BaseCommand):
    """A command with sub-actions run as a member: `handle` resolves `--as/--org` and calls `_<action>`.

    A refused request (DomainError) becomes exit 2 with each field's reason on its own line.
    """

    def handle(self, *args, action, **options):
        membership = resolve_membership(options)
        try:
            return getattr(self, f"_{action.replace('-', '_')}")(membership, options)
        except DomainError as exc:
            raise usage_error(exc) from exc
