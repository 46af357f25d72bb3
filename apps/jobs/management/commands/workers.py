"""`manage.py workers`: the worker hosts, their queues, capabilities and liveness."""

from django.core.management.base import BaseCommand
from django.utils import timezone

from apps.jobs.selectors import worker_hosts


class Command(BaseCommand):
    help = (
        "List worker hosts with their queues, providers, sandbox support and last heartbeat. Exit 1 if none is alive."
    )

    def add_arguments(self, parser):
        parser.add_argument("--alive", action="store_true", help="only hosts heard from recently")

    def handle(self, *args, alive, **options):
        hosts = [host for host in worker_hosts() if host.is_alive or not alive]
        self.stdout.write(f"{'HOST':32} {'ALIVE':5} {'QUEUES':16} {'LAST SEEN':>9}  PROVIDERS / BWRAP")
        now = timezone.now()
        for host in hosts:
            seen = f"{(now - host.last_heartbeat_at).total_seconds():.0f}s ago"
            providers = ",".join(p.replace("ExecutionProvider", "") for p in host.capabilities.get("providers", []))
            bwrap = "bwrap" if host.capabilities.get("bwrap") else "-"
            self.stdout.write(
                f"{host.hostname:32} {'yes' if host.is_alive else 'no':5} {','.join(host.queues):16} "
                f"{seen:>9}  {providers} / {bwrap}"
            )
        if not any(host.is_alive for host in hosts):
            raise SystemExit(1)
