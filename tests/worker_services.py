"""Each pytest-xdist worker past the first gets embedded PostgreSQL and Redis of its own.

Loaded with `-p tests.worker_services` (pyproject addopts), so this module runs in every test
process before pytest-django reads the settings. In the first worker, and in a run without
xdist, it does nothing: the tests use the services `devservices exec` started for the session.
A worker `gwN` (N > 0) gets its own data folder (`<data dir>/xdist-gwN`: passwords, secret key,
media, artifact cache) and ports (the session's + 100 x N), starts PostgreSQL and Redis there,
and points this process and every process it starts (Celery workers, commands) at them.

Why not one set of services for all workers: tests kill and restart PostgreSQL and Redis, FLUSH
the broker, sweep orphaned files under MEDIA_ROOT and count queue depths; each worker is a whole
stack of its own, so none of that reaches another worker's tests. What every worker still shares
is the host: sandbox slots (host-wide locks, made for it), network namespaces (named by pid) and
the CPU.

Only where the session's services are the embedded ones (no DATABASE_URL or CELERY_BROKER_URL
given from outside, which `make test-rabbitmq` does): the Makefile runs xdist only then.
"""

import atexit
import os
from pathlib import Path

SESSION_PORTS_STEP = 100
# Set by `devservices exec` for the session; a worker with services of its own must not see them.
SESSION_URLS = ("DATABASE_URL", "CELERY_BROKER_URL", "SANDBOX_BROKER_URL", "FLOWER_BASIC_AUTH")


def _own_services(worker: str) -> None:
    index = int(worker.removeprefix("gw"))
    repo = Path(__file__).resolve().parents[1]
    session_data = Path(os.environ.get("SWITCHYARD_DATA_DIR", repo / ".data"))
    os.environ["SWITCHYARD_DATA_DIR"] = str(session_data / f"xdist-{worker}")
    for name, default in (("SWITCHYARD_PG_PORT", 55432), ("SWITCHYARD_REDIS_PORT", 56379)):
        os.environ[name] = str(int(os.environ.get(name, default)) + SESSION_PORTS_STEP * index)
    for name in SESSION_URLS:
        os.environ.pop(name, None)

    from apps.core import devservices  # reads the folder and ports above when first imported

    started = devservices.up()
    atexit.register(devservices.down, started)
    os.environ.update(devservices.environment())


_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker not in ("", "gw0") and os.environ.get("SWITCHYARD_XDIST_SERVICES") == "1":
    _own_services(_worker)
