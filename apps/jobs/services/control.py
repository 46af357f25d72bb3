"""What the housekeeping tasks did, kept in PostgreSQL for `/metrics`: runs, errors, last success, counts.

Each run of reap, ring, dispatch_schedules and prune adds to one ControlRun row and to its
ControlCount rows (a few upserts), so every web process reads the same totals at scrape time
and a reaper that stopped running shows as a growing age (docs/decisions/0006).
"""

import logging
from collections.abc import Callable

from django.db import connection, transaction

logger = logging.getLogger(__name__)


def control_run_record(*, task: str, counts: dict[str, int] | None = None, error: BaseException | None = None) -> None:
    """Add one run of `task` (a success, or the error it raised) and what it did to the totals."""
    succeeded = error is None
    message = "" if succeeded else f"{type(error).__name__}: {error}"[:2000]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO jobs_controlrun AS r (task, runs, errors, last_run_at, last_success_at, last_error_at,"
            " last_error) VALUES (%s, 1, %s, now(), CASE WHEN %s THEN now() END, CASE WHEN %s THEN NULL"
            " ELSE now() END, %s)"
            " ON CONFLICT (task) DO UPDATE SET runs = r.runs + 1, errors = r.errors + EXCLUDED.errors,"
            " last_run_at = now(), last_success_at = COALESCE(EXCLUDED.last_success_at, r.last_success_at),"
            " last_error_at = COALESCE(EXCLUDED.last_error_at, r.last_error_at),"
            " last_error = CASE WHEN %s THEN r.last_error ELSE EXCLUDED.last_error END",
            [task, 0 if succeeded else 1, succeeded, succeeded, message, succeeded],
        )
        nonzero = sorted((name, int(value)) for name, value in (counts or {}).items() if value)
        if nonzero:
            cursor.execute(
                "INSERT INTO jobs_controlcount AS c (task, name, value)"
                " SELECT %s, name, value FROM unnest(%s::text[], %s::bigint[]) AS t(name, value)"
                " ON CONFLICT (task, name) DO UPDATE SET value = c.value + EXCLUDED.value",
                [task, [name for name, _ in nonzero], [value for _, value in nonzero]],
            )


def control_run(task: str, run: Callable[[], dict], *, counts: Callable[[dict], dict[str, int]]) -> dict:
    """Run a housekeeping service and record the run; the record never fails the task nor hides its error."""
    try:
        result = run()
    except Exception as exc:
        _record_quietly(task=task, error=exc)
        raise
    _record_quietly(task=task, counts=counts(result))
    return result


def _record_quietly(**kwargs) -> None:
    try:
        control_run_record(**kwargs)
    except Exception:
        # A metric must not turn a good run into a failed one (e.g. the database went away
        # just after the run): the next run records again.
        logger.exception("control.record_failed", extra={"task": kwargs["task"]})
