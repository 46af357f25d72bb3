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


def sandbox_host_report(*, payload: str) -> bool:
    """WorkerHost upkeep reported by a sandbox host (through `sandbox_reports`, which any sandbox host can write).

    Such a report speaks only for sandbox hosts: it may register a host that consumes `sandbox` and
    nothing else, and never touches the row of a host with other queues (a forged `ready` listing
    `gpu` would steer inference routing; a forged `stopped` would hide a live cpu worker). A refused
    one is audited like a refused run report.
    """
    import json

    from apps.jobs.models import WorkerHost
    from apps.jobs.services.sandbox_runs import sandbox_report_refuse
    from project import queues as queue_names
    from workers.sandbox import reports

    try:
        args = json.loads(payload)
        _, hostname, event, queues, capabilities, version, pid = args
        valid = (
            args[0] == reports.HOST
            and isinstance(hostname, str)
            and 0 < len(hostname) <= 255
            and event in ("ready", "heartbeat", "stopped")
            and isinstance(queues, list)
            and isinstance(capabilities, dict)
            and isinstance(version, str)
            and isinstance(pid, int)
        )
    except (ValueError, TypeError):
        valid = False
    if not valid:
        sandbox_report_refuse(report=reports.HOST, reason="malformed")
        return False
    sandbox_only = [queue_names.SANDBOX]
    other_row = WorkerHost.objects.filter(hostname=hostname).exclude(queues=sandbox_only).exists()
    if other_row or (event == "ready" and queues != sandbox_only):
        sandbox_report_refuse(report=reports.HOST, reason="not_a_sandbox_host", worker=hostname)
        return False
    worker_host_report(
        hostname=hostname, event=event, queues=queues, capabilities=capabilities, version=version[:64], pid=pid
    )
    return True
