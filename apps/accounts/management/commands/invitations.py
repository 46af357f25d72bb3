"""`manage.py invitations list|accept|decline --as USER`: invitations addressed to a user, from any organization."""

from django.core.management.base import BaseCommand

from apps.accounts.cli import add_user_argument, find_invitation, resolve_user, usage_error
from apps.accounts.selectors import invitation_received_list
from apps.accounts.services import invitation_accept, invitation_decline
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = (
        "Invitations addressed to the --as user: list them, accept one (join that organization with its role) "
        "or decline it. The user may belong to no organization yet. Exit 0 on success, 2 when refused "
        "(not yours, expired, revoked, already answered)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="invitations addressed to you, newest first, with their status")
        accept = sub.add_parser("accept", help="join the inviting organization with the invitation's role")
        accept.add_argument("invitation_id", metavar="ID", help="invitation id (a unique prefix is enough)")
        decline = sub.add_parser("decline", help="decline; the organization sees the invitation as declined")
        decline.add_argument("invitation_id", metavar="ID", help="invitation id (a unique prefix is enough)")
        for action in sub.choices.values():
            add_user_argument(action)

    def handle(self, *args, action, **options):
        user = resolve_user(options)
        received = invitation_received_list(user=user)
        if action == "list":
            for invitation in received:
                sender = invitation.invited_by.username if invitation.invited_by else "-"
                self.stdout.write(
                    f"{invitation.id}  {invitation.organization.slug:24} {invitation.role:10} "
                    f"{invitation.status:9} by {sender:16} expires {invitation.expires_at:%Y-%m-%d %H:%M}"
                )
            return
        invitation = find_invitation(received, options["invitation_id"])
        try:
            if action == "accept":
                invitation = invitation_accept(user=user, invitation=invitation)
                self.stdout.write(f"joined {invitation.organization.slug} as {invitation.role}")
            else:
                invitation = invitation_decline(user=user, invitation=invitation)
                self.stdout.write(f"declined the invitation to {invitation.organization.slug}")
        except DomainError as exc:
            raise usage_error(exc) from exc
