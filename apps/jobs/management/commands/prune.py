"""`manage.py prune [--dry-run]`: remove finished jobs, audit rows and files past retention, and orphan files."""

from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from apps.jobs import services
from apps.jobs.services.control import control_run


class Command(BaseCommand):
    help = (
        "Remove what is past retention: finished jobs (with their events and artifact files) older than their "
        "organization's retention (quota job_retention_days, else JOBS_RETENTION_DAYS), audit rows older than "
        "AUDIT_RETENTION_DAYS, stored files under artifacts/ (ARTIFACT_STORAGE_URL) that no row names, and the "
        "WorkerHost rows of workers not heard from for WORKER_HOSTS_RETENTION_DAYS. "
        "Queued and running jobs are never pruned; a sweep goes with its children. Deletes run in batches of "
        "PRUNE_BATCH_SIZE rows, one short transaction each. Beat runs the same every PRUNE_INTERVAL_SECONDS. Exit 0."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="count what would be removed; remove nothing")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=settings.PRUNE_BATCH_SIZE,
            help=f"rows per DELETE statement (default PRUNE_BATCH_SIZE, {settings.PRUNE_BATCH_SIZE})",
        )

    def handle(self, *args, dry_run, batch_size, **options):
        bar = tqdm(desc="jobs pruned", unit="job", disable=dry_run or not self.stdout.isatty())

        def progress(report):
            bar.n = report.jobs
            bar.refresh()

        def run():
            return services.jobs_prune(dry_run=dry_run, batch_size=batch_size, progress=progress)

        report = run() if dry_run else control_run("prune", run, counts=services.prune_counts)
        bar.close()
        verb = "would remove" if dry_run else "removed"
        self.stdout.write(f"{'TABLE':22} {verb.upper():>14}")
        for label, key in (
            ("jobs_job", "jobs"),
            ("jobs_jobevent", "job_events"),
            ("jobs_artifact", "artifacts"),
            ("accounts_auditevent", "audit_events"),
            ("orphan files", "orphan_files"),
            ("jobs_workerhost", "worker_hosts"),
        ):
            self.stdout.write(f"{label:22} {report[key]:>14}")
        self.stdout.write(f"{'artifact file bytes':22} {report['artifact_bytes']:>14}")
        self.stdout.write(f"{'orphan file bytes':22} {report['orphan_bytes']:>14}")
