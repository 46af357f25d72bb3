"""gunicorn settings for web (`-c project/gunicorn.conf.py`): one metrics directory per server.

prometheus-client's multiprocess mode: every web process writes its in-process counters
(`switchyard_throttle_unavailable_total`) to files in PROMETHEUS_MULTIPROC_DIR, and /metrics
sums them, so a scrape answered by any process reports the whole server (apps/operations/metrics.py).
The directory is emptied at start, as the library requires: the counters restart with the server.
"""

import os
import shutil
import tempfile


def on_starting(server):
    # Before any worker is forked or imports prometheus_client, which reads the variable at import.
    path = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"switchyard-web-metrics-{os.getpid()}")
    )
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
