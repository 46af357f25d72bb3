"""`manage.py organizations create|list --as SUPERUSER`: the tenants (platform staff only)."""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from apps.accounts.cli import USAGE_ERROR, add_user_argument, resolve_superuser, usage_error
from apps.accounts.models import Organization, User
from apps.accounts.services import organization_create
from apps.core.errors import DomainError


class Command(BaseCommand):
    help = (
        "Create and list organizations (tenants). Only an active superuser may (--as); the creation is "
        "audited (organization.created). Exit 0 on success, 2 when refused or malformed."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="create an organization with its first owner")
        create.add_argument("slug", help="short unique name used in URLs and --org (letters, digits, - and _)")
        create.add_argument("--name", required=True, help="display name")
        create.add_argument(
            "--owner",
            required=True,
            metavar="USERNAME",
            help="an existing active user who becomes its owner (create one with `manage.py users create`)",
        )
        sub.add_parser("list", help="every organization with its number of members")
        for action in sub.choices.values():
            add_user_argument(action)

    def handle(self, *args, action, **options):
        actor = resolve_superuser(options)
        if action == "list":
            organizations = Organization.objects.annotate(member_count=Count("memberships")).order_by("slug")
            for organization in organizations:
                self.stdout.write(
                    f"{organization.slug:24} {organization.member_count:4} member(s)  "
                    f"created {organization.created_at:%Y-%m-%d}  {organization.name}"
                )
            return
        owner = User.objects.filter(username=options["owner"], is_active=True).first()
        if owner is None:
            raise CommandError(f"--owner: no active user '{options['owner']}'", returncode=USAGE_ERROR)
        try:
            organization = organization_create(name=options["name"], slug=options["slug"], owner=owner, actor=actor)
        except DomainError as exc:
            raise usage_error(exc) from exc
        self.stdout.write(f"created organization {organization.slug} owned by {owner.username}")
