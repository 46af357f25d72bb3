"""`manage.py members list|invite|invitations|revoke-invitation|set-role|remove`: an organization's members."""

from django.core.management.base import BaseCommand

from apps.accounts.cli import add_actor_arguments, find_invitation, resolve_membership, usage_error
from apps.accounts.models import Role
from apps.accounts.selectors import invitation_list, member_get, member_list
from apps.accounts.services import invitation_create, invitation_revoke, member_remove, member_set_role
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = (
        "List an organization's members, invite people (they join by accepting: `manage.py invitations "
        "accept`), revoke invitations, change roles, remove members. Every change is audited. "
        "Exit 0 on success, 2 when the request is refused or malformed."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="members and their roles")
        invite = sub.add_parser(
            "invite",
            help="invite a username with a role; they join when they accept (there is no direct add)",
            description="Invite USERNAME to the organization with ROLE. Nothing changes until that user "
            "accepts with `manage.py invitations accept ID --as USERNAME`; the invitation expires after "
            "INVITATION_TTL_DAYS (default 7). Prints 'invitation ID invited USERNAME as ROLE ...'.",
        )
        invite.add_argument("username", help="the login name of the person to invite")
        invite.add_argument("role", choices=Role.values, help="role on joining (only an owner invites an owner)")
        sub.add_parser("invitations", help="the organization's invitations and their status, newest first")
        revoke = sub.add_parser("revoke-invitation", help="withdraw a pending invitation")
        revoke.add_argument("invitation_id", metavar="ID", help="invitation id (a unique prefix is enough)")
        set_role = sub.add_parser("set-role", help="change a member's role")
        set_role.add_argument("username")
        set_role.add_argument("role", choices=Role.values)
        remove = sub.add_parser("remove", help="remove a member; their API tokens stop working")
        remove.add_argument("username")
        for action in sub.choices.values():
            add_actor_arguments(action)

    def handle(self, *args, action, **options):
        actor = resolve_membership(options)
        try:
            getattr(self, f"_{action.replace('-', '_')}")(actor, options)
        except DomainError as exc:
            raise usage_error(exc) from exc

    def _list(self, actor, options):
        for member in member_list(membership=actor):
            self.stdout.write(f"{member.user.username:24} {member.role}")

    def _invite(self, actor, options):
        invitation = invitation_create(actor=actor, username=options["username"], role=options["role"])
        self.stdout.write(
            f"invitation {invitation.id} invited {invitation.username} as {invitation.role} "
            f"(until {invitation.expires_at:%Y-%m-%d %H:%M} UTC; they accept with "
            f"`manage.py invitations accept {str(invitation.id)[:8]} --as {invitation.username}`)"
        )

    def _invitations(self, actor, options):
        for invitation in invitation_list(membership=actor):
            sender = invitation.invited_by.username if invitation.invited_by else "-"
            self.stdout.write(
                f"{invitation.id}  {invitation.username:24} {invitation.role:10} {invitation.status:9} "
                f"by {sender:16} expires {invitation.expires_at:%Y-%m-%d %H:%M}"
            )

    def _revoke_invitation(self, actor, options):
        invitation = find_invitation(invitation_list(membership=actor), options["invitation_id"])
        invitation = invitation_revoke(actor=actor, invitation=invitation)
        self.stdout.write(f"revoked invitation {invitation.id} of {invitation.username}")

    def _set_role(self, actor, options):
        member = member_get(membership=actor, username=options["username"])
        member = member_set_role(actor=actor, membership=member, role=options["role"])
        self.stdout.write(f"{member.user.username} is now {member.role}")

    def _remove(self, actor, options):
        member_remove(actor=actor, membership=member_get(membership=actor, username=options["username"]))
        self.stdout.write(f"removed {options['username']}")
