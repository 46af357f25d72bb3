"""Check the database (with pgvector) and the broker before anything else starts."""

from django.core.management.base import BaseCommand

from apps.core.health import check_artifact_storage, check_vector_operations, readiness


class Command(BaseCommand):
    help = (
        "Check that the database is reachable and that pgvector works on it (distances and an HNSW "
        "build on 384-dimension vectors, rolled back), that the broker is reachable, and that the artifact "
        "storage (ARTIFACT_STORAGE_URL) takes, gives back and deletes a probe object. "
        "Prints one line per service; exits 1 when any of them fails, without a traceback."
    )

    def handle(self, *args, **options):
        failed = False
        results = readiness()
        if results[0].ok:
            results.insert(1, check_vector_operations())
        results.append(check_artifact_storage())
        for result in results:
            if result.ok:
                self.stdout.write(f"ok: {result.message}")
            else:
                failed = True
                self.stderr.write(f"error: {result.message}")
        if failed:
            raise SystemExit(1)
