"""`manage.py permissions`: the permission matrix as Markdown tables (docs/permissions.md embeds it)."""

from django.core.management.base import BaseCommand

from apps.accounts import permissions as p
from apps.accounts.models import Role


def matrix_markdown() -> str:
    roles = Role.values
    header = f"| action | token scope | {' | '.join(roles)} |\n|---|---|{'---|' * len(roles)}\n"
    rows = "".join(
        f"| `{action}` | `{p.SCOPE_BY_ACTION[action]}` | "
        + " | ".join("yes" if role in allowed else "-" for role in roles)
        + " |\n"
        for action, allowed in p.PERMISSIONS.items()
    )
    kinds_header = f"| job kind | {' | '.join(roles)} |\n|---|{'---|' * len(roles)}\n"
    kinds = "".join(
        f"| `{kind}` | "
        + " | ".join("yes" if p.may_submit_kind(_Member(role), kind) else "-" for role in roles)
        + " |\n"
        for kind in sorted(p.SUBMIT_BY_KIND)
    )
    return f"{header}{rows}\nWho may submit each job kind:\n\n{kinds_header}{kinds}"


class _Member:
    """Just enough of a Membership for the matrix functions."""

    def __init__(self, role: str):
        self.role = role


class Command(BaseCommand):
    help = "Print who may do what: every action by role, its token scope, and who may submit each job kind."

    def handle(self, *args, **options):
        self.stdout.write(matrix_markdown(), ending="")
