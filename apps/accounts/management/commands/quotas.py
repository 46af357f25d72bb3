"""`manage.py quotas show|set ORG`: an organization's quotas (platform staff; changes are audited)."""

import json

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, usage_error
from apps.accounts.models import Organization, OrganizationQuota
from apps.accounts.services import organization_quota_set
from apps.core.errors import DomainError


def _pair(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected NAME=NUMBER, got '{text}'")
    number = float(value)
    return name, int(number) if number.is_integer() else number


class Command(BaseCommand):
    help = (
        "Show or set an organization's quotas: active jobs per kind, running jobs per queue, sandbox limit caps, "
        "GPU seconds per day."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        show = sub.add_parser("show", help="the effective quota and current use")
        show.add_argument("org", help="organization slug")
        change = sub.add_parser("set", help="change quota values (others keep theirs)")
        change.add_argument("org", help="organization slug")
        change.add_argument(
            "--concurrent", action="append", default=[], metavar="KIND=N", help="most active jobs of a kind"
        )
        change.add_argument(
            "--running",
            action="append",
            default=[],
            metavar="QUEUE=N",
            help="most jobs running at once in a queue (cpu, gpu); the rest wait queued; N=0 removes the limit",
        )
        change.add_argument(
            "--starts-per-minute",
            action="append",
            default=[],
            metavar="KIND=N",
            help="most jobs of a kind started in any 60 s (e.g. inference=30); the rest wait queued; N=0 removes it",
        )
        change.add_argument(
            "--sandbox-limit", action="append", default=[], metavar="NAME=MAX", help="cap, e.g. memory_mb=256"
        )
        change.add_argument(
            "--share-weight", type=float, help="fair share weight under contention (default 1; 2 = twice the share)"
        )
        change.add_argument("--gpu-seconds-per-day", type=int, help="GPU seconds per UTC day; -1 for unlimited")
        change.add_argument(
            "--retention-days",
            type=int,
            help="days finished jobs are kept before `manage.py prune` removes them; -1 for JOBS_RETENTION_DAYS",
        )

    def handle(self, *args, action, **options):
        from apps.jobs.quotas import quota_usage

        organization = Organization.objects.filter(slug=options["org"]).first()
        if organization is None:
            raise CommandError(f"org: no organization '{options['org']}'", returncode=USAGE_ERROR)
        if action == "set":
            current = OrganizationQuota.objects.filter(organization=organization).first()
            try:
                concurrent = dict(_pair(text) for text in options["concurrent"])
                caps = dict(_pair(text) for text in options["sandbox_limit"])
                running = dict(_pair(text) for text in options["running"])
                starts = dict(_pair(text) for text in options["starts_per_minute"])
            except ValueError as exc:
                raise CommandError(str(exc), returncode=USAGE_ERROR) from exc
            values = {
                "concurrent_jobs": {**(current.concurrent_jobs if current else {}), **concurrent},
                "sandbox_limits": {**(current.sandbox_limits if current else {}), **caps},
                "running_jobs": {
                    queue: limit
                    for queue, limit in {**(current.running_jobs if current else {}), **running}.items()
                    if limit != 0
                },
                "starts_per_minute": {
                    kind: limit
                    for kind, limit in {**(current.starts_per_minute if current else {}), **starts}.items()
                    if limit != 0
                },
            }
            if options["share_weight"] is not None:
                values["share_weight"] = options["share_weight"]
            if options["retention_days"] is not None:
                days = options["retention_days"]
                values["job_retention_days"] = None if days < 0 else days
            if options["gpu_seconds_per_day"] is not None:
                seconds = options["gpu_seconds_per_day"]
                values["gpu_seconds_per_day"] = None if seconds < 0 else seconds
            try:
                organization_quota_set(organization=organization, actor=None, **values)
            except DomainError as exc:
                raise usage_error(exc) from exc
        self.stdout.write(json.dumps(quota_usage(organization), indent=2, sort_keys=True))
