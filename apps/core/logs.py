"""Log records as JSON lines (or plain text for people), each with the context it happened in."""

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "task_id", "task_name"}


# What every record logged in this request or job should carry (job_id, organization_id,
# request_id, ...). A ContextVar, not a thread-local: each request and task gets its own,
# and gevent/asyncio servers keep them apart too.
_log_context: ContextVar[dict | None] = ContextVar("log_context", default=None)


@contextmanager
def log_context(**fields) -> Iterator[None]:
    """Every record logged inside the block carries `fields` (unless the call passes its own)."""
    token = _log_context.set({**(_log_context.get() or {}), **fields})
    try:
        yield
    finally:
        _log_context.reset(token)


def bind_log_context(**fields) -> None:
    """Add fields to the current request's or job's context, for what it logs from now on.

    Used where the value is learnt halfway (the organization once the API knows who calls);
    a no-op outside a `log_context` block, so nothing leaks into the next request.
    """
    current = _log_context.get()
    if current is not None:
        current.update(fields)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestLogContextMiddleware:
    """Gives each web request its own log context with a request id (the proxy's X-Request-ID if sane)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        # A fresh dict per request: bind_log_context mutates it in place.
        token = _log_context.set({"request_id": request_id})
        try:
            response = self.get_response(request)
        finally:
            _log_context.reset(token)
        response["X-Request-ID"] = request_id
        return response


class TaskContextFilter(logging.Filter):
    """Adds the Celery task id and name, and the bound log context, to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from celery import current_task

        for key, value in (_log_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)

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


def current_request_id() -> str | None:
    """The id of the web request being handled (also sent back as X-Request-ID), or None."""
    return (_log_context.get() or {}).get("request_id")
