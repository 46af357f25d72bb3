"""The `sleep` job kind: waits in steps, to test queues and workers and to time the job path."""

import time
from collections.abc import Callable


class TransientDrillError(RuntimeError):
    """A deliberate transient failure, to drill the retry policy."""


def run_sleep(
    *,
    duration_s: float,
    steps: int,
    fail_first_attempts: int,
    attempt: int,
    report_progress: Callable[[float, str], None],
    raise_if_cancelled: Callable[[], None],
    snooze_first_s: float = 0,
    snooze: Callable[[float], None] | None = None,
) -> dict:
    if snooze_first_s and attempt == 1 and snooze is not None:
        snooze(snooze_first_s)  # does not return: the job is queued again, due in that many seconds
    if attempt <= fail_first_attempts:
        raise TransientDrillError(f"drill: attempt {attempt} of the first {fail_first_attempts} fails on purpose")
    started = time.monotonic()
    step_s = duration_s / steps
    for step in range(1, steps + 1):
        raise_if_cancelled()
        if step_s > 0:
            time.sleep(step_s)
        report_progress(step / steps, f"step {step}/{steps}")
    return {"slept_s": round(time.monotonic() - started, 4), "steps": steps, "attempt": attempt}
