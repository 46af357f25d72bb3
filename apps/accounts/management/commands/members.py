"""`manage.py members list|add|set-role|remove`: an organization's members and their roles."""

from django.core.management.base import BaseCommand

from apps.accounts.cli import add_actor_arguments, resolve_membership, usage_error
from apps.accounts.models import Role
from apps.accounts.selectors import member_get, member_list
from apps.accounts.services import member_add, member_remove, member_set_role
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = "List an organization's members, add existing users, change roles, remove members (audited)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        sub.add_parser("list", help="members and their roles")
        add = sub.add_parser("add", help="add an existing user with a role")
        add.add_argument("username")
        add.add_argument("role", choices=Role.values)
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
            if action == "list":
                for member in member_list(membership=actor):
                    self.stdout.write(f"{member.user.username:24} {member.role}")
            elif action == "add":
                member = member_add(actor=actor, username=options["username"], role=options["role"])
                self.stdout.write(f"added {member.user.username} as {member.role}")
            elif action == "set-role":
                member = member_get(membership=actor, username=options["username"])
                member = member_set_role(actor=actor, membership=member, role=options["role"])
                self.stdout.write(f"{member.user.username} is now {member.role}")
            else:
                member_remove(actor=actor, membership=member_get(membership=actor, username=options["username"]))
                self.stdout.write(f"removed {options['username']}")
        except DomainError as exc:
            raise usage_error(exc) from exc
