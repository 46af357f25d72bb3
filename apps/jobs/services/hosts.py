"""The WorkerHost registry: hosts announce themselves, beat, and stop."""

from django.utils import timezone


def worker_host_register(*, hostname: str, queues: list[str], capabilities: dict, version: str, pid: int) -> None:
    from apps.jobs.models import WorkerHost

    now = timezone.now()
    WorkerHost.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "capabilities": capabilities,
            "version": version,
            "pid": pid,
            "started_at": now,
            "last_heartbeat_at": now,
            "stopped_at": None,
        },
    )


def worker_host_heartbeat(*, hostname: str) -> None:
    from apps.jobs.models import WorkerHost

    WorkerHost.objects.filter(hostname=hostname).update(last_heartbeat_at=timezone.now(), stopped_at=None)


def worker_host_stopped(*, hostname: str) -> None:
    from apps.jobs.models import WorkerHost

    WorkerHost.objects.filter(hostname=hostname).update(stopped_at=timezone.now())


def worker_host_report(
    *, hostname: str, event: str, queues: list[str], capabilities: dict, version: str, pid: int
) -> None:
    """WorkerHost upkeep for hosts that report through `control` instead of writing themselves."""
    if event == "ready":
        worker_host_register(hostname=hostname, queues=queues, capabilities=capabilities, version=version, pid=pid)
    elif event == "heartbeat":
        worker_host_heartbeat(hostname=hostname)
    elif event == "stopped":
        worker_host_stopped(hostname=hostname)
