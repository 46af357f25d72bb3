"""Check the database (with pgvector) and the broker before anything else starts."""

from django.core.management.base import BaseCommand

from apps.core.health import readiness


class Command(BaseCommand):
    help = (
        "Check that the database is reachable and has pgvector, and that the broker is reachable. "
        "Prints one line per service; exits 1 when any of them fails, without a traceback."
    )

    def handle(self, *args, **options):
        failed = False
        for result in readiness():
            if result.ok:
                self.stdout.write(f"ok: {result.message}")
            else:
                failed = True
                self.stderr.write(f"error: {result.message}")
        if failed:
            raise SystemExit(1)
