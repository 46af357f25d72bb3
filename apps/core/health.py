"""Readiness checks of the services Switchyard depends on, each answering in one line."""

from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.db.utils import Error as DatabaseError


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    message: str


def _where(url: str) -> str:
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" + (f"/{path}" if path else "")


def _database_where() -> str:
    db = settings.DATABASES["default"]
    return f"postgresql://{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db.get('NAME')}"


def check_database() -> CheckResult:
    where = _database_where()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            row = cursor.fetchone()
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return CheckResult("database", False, f"database at {where} is unreachable: {reason}")
    if row is None:
        return CheckResult(
            "database",
            False,
            f"database at {where} lacks the pgvector extension (install pgvector >= 0.8 on that server)",
        )
    return CheckResult("database", True, f"database at {where} is reachable (pgvector {row[0]})")


def check_vector_operations() -> CheckResult:
    """Run pgvector's distance and HNSW code once, inside a transaction that is rolled back.

    A pgvector build compiled for newer CPU instructions than this machine has (such as
    AVX-512) loads and answers small queries, then kills its backend with SIGILL on the first
    real vectors: far better to say so here than in the middle of a job.
    """
    where = _database_where()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cursor.execute("CREATE TEMPORARY TABLE preflight_vectors (v vector(384)) ON COMMIT DROP")
            cursor.execute(
                "INSERT INTO preflight_vectors SELECT array_fill((i % 7 + 1)::real, ARRAY[384])::vector"
                " FROM generate_series(1, 200) AS i"
            )
            cursor.execute("CREATE INDEX ON preflight_vectors USING hnsw (v vector_cosine_ops)")
            cursor.execute("SELECT min(v <=> array_fill(1::real, ARRAY[384])::vector) FROM preflight_vectors")
            cursor.fetchone()
            transaction.set_rollback(True)
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if "permission denied" in reason:
            return CheckResult("vector", True, f"pgvector at {where} not exercised ({reason})")
        return CheckResult(
            "vector",
            False,
            f"pgvector at {where} failed on 384-dimension vectors: {reason} (a server crash here usually "
            "means its vector.so was built for CPU instructions this machine lacks)",
        )
    finally:
        connection.close()
    return CheckResult("vector", True, f"pgvector at {where} computes distances and builds HNSW indexes")


def check_broker() -> CheckResult:
    from project.celery import app

    where = _where(settings.CELERY_BROKER_URL)
    try:
        with app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT)
    except Exception as exc:  # kombu raises transport-specific errors; any of them means "down"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return CheckResult("broker", False, f"broker at {where} is unreachable: {reason}")
    return CheckResult("broker", True, f"broker at {where} is reachable")


def check_artifact_storage() -> CheckResult:
    """Write, read back and delete a small probe object in the artifact storage (ARTIFACT_STORAGE_URL)."""
    from apps.core.artifact_storage import storage_check_roundtrip
    from apps.core.storage_url import storage_where

    where = storage_where(settings.ARTIFACT_STORAGE_URL)
    if not settings.ARTIFACT_STORAGE_URL:
        where = f"local disk {settings.MEDIA_ROOT}"
    try:
        storage_check_roundtrip()
    except Exception as exc:  # boto3, the disk: any error means the files cannot be kept
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        return CheckResult("artifact_storage", False, f"artifact storage at {where} is unusable: {reason}")
    return CheckResult("artifact_storage", True, f"artifact storage at {where} is writable and readable")


def readiness() -> list[CheckResult]:
    return [check_database(), check_broker()]
