"""Flower for Switchyard: `celery -A project flower --conf=project/flowerconfig.py`.

Flower executes this file and takes its module-level names as options, after the
FLOWER_<OPTION> environment variables; so the environment is read here again and wins
either way. Plain Python: no Django (Flower runs with the Celery app only).
"""

import os
from urllib.parse import urlsplit

# Flower shows task arguments and can revoke tasks and shut workers down: never open.
basic_auth = [pair.strip() for pair in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if pair.strip()]
if not basic_auth and not os.environ.get("FLOWER_AUTH"):
    raise SystemExit(
        "flower: refusing to start without authentication; set FLOWER_BASIC_AUTH=user:password[,user:password] "
        "(or FLOWER_AUTH with FLOWER_OAUTH2_* for OAuth)"
    )

# Task history survives a restart: saved to this file every minute and at shutdown.
persistent = True
# Under the stack's data dir (as apps.core.devservices), so two stacks on one machine keep their own.
db = os.environ.get("FLOWER_DB") or os.path.join(os.environ.get("SWITCHYARD_DATA_DIR") or ".data", "flower.db")
state_save_interval = 60_000  # milliseconds
# Bounded memory: Flower keeps this many tasks (the Job rows in PostgreSQL keep everything).
max_tasks = int(os.environ.get("FLOWER_MAX_TASKS", "10000"))
# Workers gone for an hour leave the list; WorkerHost rows in the admin keep their history.
purge_offline_workers = 3600


def rabbitmq_management_api(broker_url: str, port: int = 15672) -> str | None:
    """RabbitMQ's management HTTP API for an amqp:// broker URL (same host), else None.

    Flower reads queue lengths of a Redis broker by itself (every priority list included),
    but of RabbitMQ only through this API (the `rabbitmq_management` plugin). Flower adds
    the vhost and, when the URL has none, the broker's own user and password.
    """
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "amqps", "pyamqp"):
        return None
    scheme = "https" if parts.scheme == "amqps" else "http"
    return f"{scheme}://{parts.hostname}:{port}/api/"


broker_api = os.environ.get("FLOWER_BROKER_API") or rabbitmq_management_api(
    os.environ.get("CELERY_BROKER_URL", ""), int(os.environ.get("RABBITMQ_MANAGEMENT_PORT", "15672"))
)


def every_queue(handler) -> list[str]:
    """The Broker page's queues: every queue the app declares, and any other a worker consumes.

    Flower lists only the queues of the workers it inspected, and it inspects them once, at
    its start: under `make run` only the sandbox worker (no Django to load) had answered by
    then, so the page showed `sandbox` alone. A queue with no live consumer (a gpu queue
    with no gpu host) is the one an operator most needs to see filling up.
    """
    declared = {handler.capp.conf.task_default_queue} | {q.name for q in handler.capp.conf.task_queues or () if q.name}
    consumed = {q["name"] for info in handler.application.workers.values() for q in info.get("active_queues") or ()}
    return sorted(declared | consumed)


def _list_every_queue_on_the_broker_page() -> None:
    # Flower has no option for this; its views ask BaseHandler.get_active_queue_names.
    from flower.views import BaseHandler

    BaseHandler.get_active_queue_names = every_queue


_list_every_queue_on_the_broker_page()
