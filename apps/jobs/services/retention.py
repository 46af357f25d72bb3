"""Retention: prune finished jobs past their organization's retention (with their events and files),
audit rows past theirs, artifact files no row names (orphans), and long-dead workers' rows.

Deletes run in batches of PRUNE_BATCH_SIZE rows, one short transaction each, taking only rows
they can lock at once (`SKIP LOCKED`): a job a user is retrying right now is left for the next
run, and nothing on the job path waits on the pruner. Files are unlinked after their rows'
transaction commits; a crash between the two leaves orphans, which the orphan pass removes.
"""

import logging
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from apps.core import artifact_storage
from apps.jobs.models import TERMINAL_STATUSES, Artifact, Job, JobEvent, WorkerHost

logger = logging.getLogger(__name__)

_TERMINAL = tuple(str(status) for status in TERMINAL_STATUSES)
ARTIFACTS_DIR = "artifacts"


@dataclass
class PruneReport:
    """What a prune removed (or, with dry_run, would remove), per table, and the bytes of files."""

    jobs: int = 0
    job_events: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    orphan_files: int = 0
    orphan_bytes: int = 0
    audit_events: int = 0
    worker_hosts: int = 0
    dry_run: bool = False


def prune_counts(report: dict) -> dict[str, int]:
    """The totals a prune run adds to `/metrics` (rows and files removed)."""
    if report.get("dry_run"):
        return {}
    return {
        "jobs_pruned": report["jobs"],
        "job_events_pruned": report["job_events"],
        "artifacts_pruned": report["artifacts"],
        "orphan_files_pruned": report["orphan_files"],
        "audit_events_pruned": report["audit_events"],
        "worker_hosts_pruned": report["worker_hosts"],
        "bytes_pruned": report["artifact_bytes"] + report["orphan_bytes"],
    }


# A top-level job is past retention when it finished longer ago than its organization keeps
# jobs (its quota's job_retention_days, else JOBS_RETENTION_DAYS) and none of its children is
# unfinished. Children go with their parent (a sweep and its runs are one unit): first the
# children of such parents, then the parents once they have none left.
_PAST_RETENTION = (
    "p.parent_id IS NULL AND p.status IN %(terminal)s"
    " AND p.finished_at < now() - make_interval(days => COALESCE(q.job_retention_days, %(days)s))"
    " AND NOT EXISTS (SELECT 1 FROM jobs_job u WHERE u.parent_id = p.id AND u.status NOT IN %(terminal)s)"
    " AND (%(organization)s::bigint IS NULL OR p.organization_id = %(organization)s::bigint)"
)
# Each batch walks the primary key from where the last one stopped (keyset), so a prune reads
# the table about once in all instead of once per batch: its CPU, which it shares with the job
# path, stays proportional to what it deletes.
_CHILDREN_SQL = (
    "SELECT c.id FROM jobs_job c JOIN jobs_job p ON p.id = c.parent_id"  # noqa: S608 (constant SQL)
    " LEFT JOIN accounts_organizationquota q ON q.organization_id = p.organization_id"
    f" WHERE c.parent_id IS NOT NULL AND c.id > %(after)s AND {_PAST_RETENTION} ORDER BY c.id LIMIT %(limit)s"
)
_PARENTS_SQL = (
    "SELECT p.id FROM jobs_job p LEFT JOIN accounts_organizationquota q ON q.organization_id = p.organization_id"  # noqa: S608
    f" WHERE p.id > %(after)s AND {_PAST_RETENTION}"
    " AND NOT EXISTS (SELECT 1 FROM jobs_job c WHERE c.parent_id = p.id) ORDER BY p.id LIMIT %(limit)s"
)
_ALL_SQL = (
    "SELECT p.id FROM jobs_job p LEFT JOIN accounts_organizationquota q ON q.organization_id = p.organization_id"  # noqa: S608
    f" WHERE {_PAST_RETENTION}"
    " UNION ALL SELECT c.id FROM jobs_job c JOIN jobs_job p ON p.id = c.parent_id"
    " LEFT JOIN accounts_organizationquota q ON q.organization_id = p.organization_id"
    f" WHERE {_PAST_RETENTION}"
)


def jobs_prune(
    *, dry_run: bool = False, batch_size: int | None = None, organization_id: int | None = None, progress=None
) -> dict:
    """Remove what is past retention: finished jobs with their events and artifact files, old audit rows, orphans.

    Returns the PruneReport as a dict. `progress(report)` is called after each batch. With
    `organization_id`, only that organization's jobs (no audit rows, no orphan files).
    """
    batch_size = batch_size or settings.PRUNE_BATCH_SIZE
    pause_s = settings.PRUNE_BATCH_PAUSE_SECONDS
    report = PruneReport(dry_run=dry_run)
    params = {
        "terminal": _TERMINAL,
        "days": settings.JOBS_RETENTION_DAYS,
        "limit": batch_size,
        "organization": organization_id,
    }
    if dry_run:
        _count_past_retention(report, params)
    else:
        for sql in (_CHILDREN_SQL, _PARENTS_SQL):
            after = uuid.UUID(int=0)
            while True:
                with connection.cursor() as cursor:
                    cursor.execute(sql, {**params, "after": after})
                    ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    break
                _delete_jobs(ids, report)  # rows locked by someone else are left for the next run
                after = ids[-1]
                if progress is not None:
                    progress(report)
                # A batch costs a database core for ~0.2 s (docs/benchmarks.md); the pause leaves
                # the database to the job path in between, so pruning is paced, not a burst.
                time.sleep(pause_s)
    if organization_id is None:
        _prune_audit(report, batch_size=batch_size, dry_run=dry_run)
        _prune_orphans(report, dry_run=dry_run)
        _prune_worker_hosts(report, dry_run=dry_run)
    if not dry_run and (report.jobs or report.audit_events or report.orphan_files or report.worker_hosts):
        logger.info("jobs.pruned", extra=asdict(report))
    return asdict(report)


def _count_past_retention(report: PruneReport, params: dict) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH doomed AS ({_ALL_SQL}) SELECT (SELECT count(*) FROM doomed),"  # noqa: S608 (constant SQL)
            " (SELECT count(*) FROM jobs_jobevent WHERE job_id IN (SELECT id FROM doomed)),"
            " (SELECT count(*) FROM jobs_artifact WHERE job_id IN (SELECT id FROM doomed)),"
            " (SELECT COALESCE(sum(size_bytes), 0) FROM jobs_artifact WHERE job_id IN (SELECT id FROM doomed))",
            params,
        )
        report.jobs, report.job_events, report.artifacts, report.artifact_bytes = cursor.fetchone()


def _delete_jobs(ids: list, report: PruneReport) -> int:
    """One short transaction: lock what is still finished, delete it and every row hanging on it; then the files."""
    with transaction.atomic(), connection.cursor() as cursor:
        # A job retried since it was picked is no longer finished; one being retried right now
        # is locked: both stay.
        cursor.execute(
            "SELECT id FROM jobs_job WHERE id = ANY(%s::uuid[]) AND status IN %s FOR UPDATE SKIP LOCKED",
            [ids, _TERMINAL],
        )
        locked = [row[0] for row in cursor.fetchall()]
        if not locked:
            return 0
        cursor.execute("DELETE FROM jobs_artifact WHERE job_id = ANY(%s::uuid[]) RETURNING file, size_bytes", [locked])
        files = cursor.fetchall()
        cursor.execute("DELETE FROM jobs_jobevent WHERE job_id = ANY(%s::uuid[])", [locked])
        events = cursor.rowcount
        for relation in _other_references():
            table, column = relation.related_model._meta.db_table, relation.field.column
            if relation.on_delete is models.SET_NULL:
                cursor.execute(f"UPDATE {table} SET {column} = NULL WHERE {column} = ANY(%s::uuid[])", [locked])  # noqa: S608
            else:
                cursor.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s::uuid[])", [locked])  # noqa: S608
        cursor.execute("DELETE FROM jobs_job WHERE id = ANY(%s::uuid[])", [locked])
        report.jobs += cursor.rowcount
        report.job_events += events
        report.artifacts += len(files)
        report.artifact_bytes += sum(size for _name, size in files)
        transaction.on_commit(lambda: _unlink([name for name, _size in files]))
    return len(locked)


def _other_references() -> list:
    """Foreign keys to Job other than the ones pruned above (a memory's import job, a schedule's last job)."""
    handled = {JobEvent, Artifact, Job}
    # include_hidden: relations declared with related_name="+" are left out of related_objects.
    return [
        field
        for field in Job._meta.get_fields(include_hidden=True)
        if field.auto_created
        and not field.concrete
        and (field.one_to_many or field.one_to_one)
        and field.related_model not in handled
        and field.on_delete in (models.SET_NULL, models.CASCADE)
    ]


def _unlink(names: list[str]) -> None:
    # Through the storage: on the local disk, folders left empty go too (LocalArtifactStorage.delete).
    artifact_storage.delete_stored(names)


def _prune_audit(report: PruneReport, *, batch_size: int, dry_run: bool) -> None:
    """Audit rows outlive jobs: AUDIT_RETENTION_DAYS, a clock of their own."""
    cutoff = "now() - make_interval(days => %s)"
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(
                f"SELECT count(*) FROM accounts_auditevent WHERE created_at < {cutoff}",  # noqa: S608
                [settings.AUDIT_RETENTION_DAYS],
            )
            report.audit_events = cursor.fetchone()[0]
            return
        while True:
            cursor.execute(
                "DELETE FROM accounts_auditevent WHERE id IN (SELECT id FROM accounts_auditevent"  # noqa: S608
                f" WHERE created_at < {cutoff} LIMIT %s)",
                [settings.AUDIT_RETENTION_DAYS, batch_size],
            )
            report.audit_events += cursor.rowcount
            if cursor.rowcount < batch_size:
                return


def _prune_worker_hosts(report: PruneReport, *, dry_run: bool) -> None:
    """WorkerHost rows of workers not heard from for WORKER_HOSTS_RETENTION_DAYS.

    Every worker process is its own node (`cpu-<pid>@host`), so each restart leaves a row
    behind; past the retention it says nothing the admin or `manage.py workers` should list.
    """
    cutoff = timezone.now() - timedelta(days=settings.WORKER_HOSTS_RETENTION_DAYS)
    stale = WorkerHost.objects.filter(last_heartbeat_at__lt=cutoff)
    report.worker_hosts = stale.count() if dry_run else stale.delete()[0]


def _prune_orphans(report: PruneReport, *, dry_run: bool) -> None:
    """Stored files under artifacts/ that no Artifact row names (e.g. replaced outputs, a fenced-out
    attempt's upload cut short by a crash), once old enough; listed and deleted through the storage.

    A running job stores a file before recording it, so a file younger than
    PRUNE_ORPHAN_MIN_AGE_SECONDS, or in the folder of a job still unfinished, is left alone.
    """
    named = set(Artifact.objects.values_list("file", flat=True))
    unfinished = {str(pk) for pk in Job.objects.exclude(status__in=TERMINAL_STATUSES).values_list("id", flat=True)}
    horizon = time.time() - settings.PRUNE_ORPHAN_MIN_AGE_SECONDS
    doomed = []
    for stored in artifact_storage.stored_objects(ARTIFACTS_DIR):
        relative_parts = stored.name.split("/")[1:]
        if len(relative_parts) > 1 and relative_parts[0] in unfinished:
            continue
        if stored.name in named or stored.modified > horizon:
            continue
        report.orphan_files += 1
        report.orphan_bytes += stored.size
        doomed.append(stored.name)
    if not dry_run:
        artifact_storage.delete_stored(doomed)
