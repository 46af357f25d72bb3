"""`manage.py users create|list --as SUPERUSER`: logins (platform staff only); passwords never on the command line."""

import getpass
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, add_user_argument, resolve_superuser, usage_error
from apps.accounts.models import User
from apps.accounts.services import user_create
from apps.core.errors import DomainError

PASSWORD_ENV = "SWITCHYARD_NEW_USER_PASSWORD"  # noqa: S105 (the variable's name, not a password)


class Command(BaseCommand):
    help = (
        "Create and list users. Only an active superuser may (--as); creations are audited (user.created). "
        "The password is read from --password-stdin, else $" + PASSWORD_ENV + ", else an interactive prompt; "
        "never from the command line (where other users and the shell history would see it). It must pass "
        "the configured password validators. Exit 0 on success, 2 when refused or malformed."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser(
            "create",
            help="create a user (join an organization by invitation afterwards)",
            description="Create USERNAME. The password is read from --password-stdin, else $"
            + PASSWORD_ENV
            + ", else a terminal prompt (typed twice); it is never taken from the command line, "
            "and must pass the password validators. Audited as user.created.",
        )
        create.add_argument("username", help="login name")
        create.add_argument("--email", default="", help="e-mail address (optional)")
        create.add_argument("--staff", action="store_true", help="may log in to the admin (is_staff)")
        create.add_argument(
            "--superuser", action="store_true", help="platform superuser (every permission; implies --staff)"
        )
        source = create.add_mutually_exclusive_group()
        source.add_argument(
            "--password-stdin", action="store_true", help="read the password from the first line of standard input"
        )
        source.add_argument(
            "--no-password",
            action="store_true",
            help="no password at all: the account can use only API tokens (for service accounts)",
        )
        sub.add_parser("list", help="every user with flags and organizations")
        for action in sub.choices.values():
            add_user_argument(action)

    def handle(self, *args, action, **options):
        actor = resolve_superuser(options)
        if action == "list":
            for user in User.objects.prefetch_related("memberships__organization").order_by("username"):
                flags = (
                    ",".join(
                        name
                        for name, on in (
                            ("superuser", user.is_superuser),
                            ("staff", user.is_staff),
                            ("inactive", not user.is_active),
                        )
                        if on
                    )
                    or "-"
                )
                orgs = ",".join(f"{m.organization.slug}:{m.role}" for m in user.memberships.all()) or "-"
                self.stdout.write(f"{user.username:24} {user.email or '-':32} {flags:24} {orgs}")
            return
        password = None if options["no_password"] else self._password(options)
        try:
            user = user_create(
                actor=actor,
                username=options["username"],
                email=options["email"],
                password=password,
                is_staff=options["staff"] or options["superuser"],
                is_superuser=options["superuser"],
            )
        except DomainError as exc:
            raise usage_error(exc) from exc
        self.stdout.write(f"created user {user.username}")

    def _password(self, options) -> str:
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\r\n")
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        elif sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Password (again): ") != password:
                raise CommandError("password: the two entries differ", returncode=USAGE_ERROR)
        else:
            raise CommandError(
                f"password: give it with --password-stdin, ${PASSWORD_ENV} or at the prompt of a terminal "
                "(or --no-password for a token-only account)",
                returncode=USAGE_ERROR,
            )
        if not password:
            raise CommandError("password: empty", returncode=USAGE_ERROR)
        return password
