"""Create the demo organization and its admin login for development."""

import os

from django.core.management.base import BaseCommand
from django.db import transaction

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import membership_set, organization_create
from apps.agents.services import embedding_model_install
from apps.core import devservices


class Command(BaseCommand):
    help = (
        "Create (or update) the 'demo' organization and a superuser 'admin' who owns it. "
        "The password comes from DEMO_ADMIN_PASSWORD, else from .data/admin.password "
        "(generated on first use, never a fixed one); the shipped text embedder becomes the demo "
        "organization's production embedding model. Safe to run repeatedly."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="login name of the demo admin (default: admin)")
        parser.add_argument("--quiet", action="store_true", help="print nothing")

    @transaction.atomic
    def handle(self, *args, username, quiet, **options):
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or devservices.admin_password()
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        organization = Organization.objects.filter(slug="demo").first() or organization_create(name="Demo", slug="demo")
        membership = membership_set(user=user, organization=organization, role=Role.OWNER)
        # Text search and text embeddings work out of the box: the shipped embedder becomes the
        # demo organization's production embedding model (the same bytes again change nothing).
        embedding_version, _ = embedding_model_install(membership=membership)
        if not quiet:
            self.stdout.write(f"demo login: {username} / {password}  (organization: {organization.slug})")
            self.stdout.write(
                f"embedding model: {embedding_version.model.name}@{embedding_version.number} (production)"
            )
