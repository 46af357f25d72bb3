"""Log records as JSON lines (or plain text for people), each with the context it happened in."""

import logging

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "task_id", "task_name"}


class TaskContextFilter(logging.Filter):
    """Adds the Celery task id and name to records logged while a task runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery import current_task

        request = getattr(current_task, "request", None) if current_task else None
        if request is not None and getattr(request, "id", None):
            record.task_id = request.id
            record.task_name = current_task.name
        return True


class PlainFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the extras stay visible to a person reading."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        for key in ("task_id", "task_name"):
            if getattr(record, key, None):
                context[key] = getattr(record, key)
        if context:
            line += " " + " ".join(f"{key}={value}" for key, value in sorted(context.items()))
        return line
