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
