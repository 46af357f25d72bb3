"""gunicorn settings for web (`-c project/gunicorn.conf.py`): one metrics directory and control socket per server.

prometheus-client's multiprocess mode: every web process writes its in-process counters
(`switchyard_throttle_unavailable_total`) to files in PROMETHEUS_MULTIPROC_DIR, and /metrics
sums them, so a scrape answered by any process reports the whole server (apps/operations/metrics.py).
The directory is emptied at start, as the library requires: the counters restart with the server.
"""

import os
import shutil
import tempfile

# gunicorn's control socket (`gunicornc`) defaults to one path per user ($XDG_RUNTIME_DIR or
# ~/.gunicorn/gunicorn.ctl): a second stack on the machine would take over the first one's.
# It goes under the stack's data dir instead, by the same rule as apps.core.devservices.DATA_DIR
# (this file is executed by gunicorn, before the project is importable). GUNICORN_CONTROL_SOCKET
# names another path, e.g. where the data dir is read-only.
_DATA_DIR = os.environ.get("SWITCHYARD_DATA_DIR") or os.path.join(os.path.dirname(os.path.dirname(__file__)), ".data")
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET") or os.path.join(
    os.path.abspath(_DATA_DIR), "run", "gunicorn.ctl"
)


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
