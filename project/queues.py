"""Queues, routes, time limits and reliability settings for every Celery app.

Plain Python (no Django) so the sandbox host, which holds no database credentials,
builds its Celery app from the same definitions as everyone else.
"""

from kombu import Exchange, Queue

CPU, GPU, SANDBOX, CONTROL = "cpu", "gpu", "sandbox", "control"
QUEUE_NAMES = (CPU, GPU, SANDBOX, CONTROL)
# Job priorities are 0-9 (9 = most urgent) on every broker; job dispatch translates
# them for Redis, where kombu serves lower numbers first.
MAX_PRIORITY = 9

# Redis redelivers a message that stays unacked this long (acks_late keeps it unacked
# while the job runs). It must exceed the longest hard time limit, or a job still
# running would be delivered a second time; the claim refuses such a delivery anyway.
VISIBILITY_TIMEOUT_S = 4 * 3600
# The longest hard limit any task may ask for; workers refuse to start if configured above it.
MAX_TASK_TIME_LIMIT_S = 3 * 3600
# RabbitMQ's default consumer_timeout (30 min) closes a channel holding an unacked
# message; deployments on RabbitMQ must raise it above MAX_TASK_TIME_LIMIT_S.
RABBITMQ_CONSUMER_TIMEOUT_MS = 30 * 60 * 1000

TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments={"x-max-priority": MAX_PRIORITY})
    for name in QUEUE_NAMES
)

# Job execution is routed per job at publish time (its queue is on the Job row);
# everything else that is not a job runs on `control`.
TASK_ROUTES = {
    "jobs.*": {"queue": CONTROL},
    "core.*": {"queue": CONTROL},
}


def celery_config() -> dict:
    """The Celery settings the job contract relies on (lowercase Celery names)."""
    return {
        "task_queues": TASK_QUEUES,
        "task_default_queue": CONTROL,
        "task_default_exchange": CONTROL,
        "task_default_routing_key": CONTROL,
        "task_routes": TASK_ROUTES,
        "task_create_missing_queues": False,
        # JSON only: a pickle payload from a compromised producer would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # A message is acknowledged after the task returns, and given back to the broker
        # when the worker process dies, so a crash loses nothing; the Job row's claim and
        # attempt fencing make the redelivery harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_default_priority": 5,
        "task_queue_max_priority": MAX_PRIORITY,
        "task_soft_time_limit": 50 * 60,
        "task_time_limit": 60 * 60,
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": ":",
        },
        # A broker blip must not kill a long GPU job; its message is redelivered after
        # reconnect and refused by the claim while the original run still holds the lease.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        # A `task-sent` event is a second broker publish per task, for a state the Job
        # row already records; Flower still sees received/started/succeeded from workers.
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_max_memory_per_child": 4 * 1024 * 1024,  # KiB: recycle a child past 4 GiB
        # The schedule file, readable after beat's stop signal closed it (project/beat_scheduler.py).
        "beat_scheduler": "project.beat_scheduler:Scheduler",
    }


def direct_queue(name: str) -> Queue:
    """`name` reached through the default exchange, which routes by queue name with no binding.

    Job messages are published this way: a flushed Redis loses kombu's exchange bindings
    while publishers still cache them as declared, and a message sent through the named
    exchange would then vanish without an error.
    """
    return Queue(name, Exchange(""), routing_key=name, queue_arguments={"x-max-priority": MAX_PRIORITY})


# --- sandbox hosts: least privilege on the broker (docs/decisions/0046) -------------------------

# Where sandbox hosts send what they report (started, output chunks, outcome, host upkeep). Not a
# Celery task queue: a gate on each control worker (apps.jobs.report_gate) reads it, checks each
# report's shape and forwards it to `control` as the one task it may be. A sandbox host's broker
# user may write this queue and no other (it cannot reach `control`, `cpu` or `gpu`).
SANDBOX_REPORTS = "sandbox_reports"
# The sandbox transport's own unacked keys: with kombu's defaults every consumer shares one
# `unacked` hash holding every in-flight message of every queue, which a sandbox user could read.
SANDBOX_UNACKED_KEYS = {
    "unacked_key": "sandbox_unacked",
    "unacked_index_key": "sandbox_unacked_index",
    "unacked_mutex_key": "sandbox_unacked_mutex",
}


def sandbox_reports_queue() -> Queue:
    """The reports queue as its consumer (the control side) declares it, with its own direct exchange.

    On RabbitMQ a sandbox user publishes through this exchange: write permission on the default
    exchange would let it publish to every queue by name.
    """
    return Queue(SANDBOX_REPORTS, Exchange(SANDBOX_REPORTS, type="direct"), routing_key=SANDBOX_REPORTS)


def sandbox_reports_route(broker_url: str) -> dict:
    """Exchange and routing key a sandbox host publishes a report with.

    Redis: the default exchange (a plain LPUSH to the queue's key, which the ACL allows; a flushed
    Redis cannot lose a binding that is not used). RabbitMQ: the reports exchange.
    """
    if broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return {"exchange": SANDBOX_REPORTS, "routing_key": SANDBOX_REPORTS}
    return {"exchange": "", "routing_key": SANDBOX_REPORTS}


def sandbox_redis_acl(*, sep: str = ":") -> list[str]:
    """The Redis 6.2+ ACL rules of a sandbox host's user (after `ACL SETUSER <name> reset on >password`).

    Keys: the `sandbox` queue (and its priority lists), the sandbox transport's unacked hash and
    index, the reports queue, and the binding sets of `sandbox` and of the remote-control fanout
    (`celery.pidbox`). Channels: the remote-control broadcast only (revoke reaches a running sandbox
    run). Commands: exactly what kombu's Redis transport runs for these; nothing that lists keys or
    reads a list, hash or sorted set whole (no LRANGE, HGETALL, ZRANGE, SCAN, KEYS, DUMP), so an
    in-flight message is readable only by the host that popped it (it knows its delivery tag).
    """
    priorities = f"[1-{MAX_PRIORITY}]"
    keys = [
        SANDBOX,
        f"{SANDBOX}{sep}{priorities}",
        # (not the mutex: only the sweep this transport never runs takes it)
        SANDBOX_UNACKED_KEYS["unacked_key"],
        SANDBOX_UNACKED_KEYS["unacked_index_key"],
        SANDBOX_REPORTS,
        f"{SANDBOX_REPORTS}{sep}{priorities}",
        f"_kombu.binding.{SANDBOX}",
        f"_kombu.binding_permanent.{SANDBOX}",
        "_kombu.binding.celery.pidbox",
        "_kombu.binding_permanent.celery.pidbox",
        # Its remote-control queue, declared (LLEN) though never used on Redis (the broadcast is
        # pub/sub); node names of sandbox workers start with `sandbox` (the Procfile's `-n sandbox-…`),
        # which no reply queue (`<uuid>.reply.celery.pidbox`) does.
        "sandbox*.celery.pidbox",
        f"sandbox*.celery.pidbox{sep}{priorities}",
    ]
    commands = [
        # connection upkeep
        "ping",
        "select",
        "client|setname",
        # consume `sandbox`, publish reports, declare (queue size)
        "brpop",
        "rpop",
        "lpush",
        "rpush",
        "llen",
        # kombu's ack emulation, by delivery tag
        "hset",
        "hget",
        "hdel",
        "zadd",
        "zrem",
        "watch",
        "unwatch",
        "multi",
        "exec",
        "discard",
        # bindings (SADD when it starts consuming; SREM, DEL of its remote-control queue when it stops)
        "sadd",
        "srem",
        "exists",
        "del",
        # the remote-control broadcast, receive only (no PUBLISH: it cannot broadcast)
        "psubscribe",
        "punsubscribe",
        "subscribe",
        "unsubscribe",
    ]
    return [
        *(f"~{key}" for key in keys),
        # The broadcast channel of each database (`/<db>.celery.pidbox`; tests use database 15),
        # each named: Redis 6.2 lets PSUBSCRIBE use a pattern only if an ACL pattern is identical.
        *(f"&/{db}.celery.pidbox" for db in range(16)),
        *(f"+{command}" for command in commands),
    ]
