"""Tasks only the tests load into their worker processes (`--include tests.support_tasks`)."""

from pathlib import Path

from celery import shared_task


@shared_task(name="tests.record_delivery", bind=True)
def record_delivery(self, path: str, token: str) -> None:
    """Leave evidence that a real worker ran the task: which worker, which token."""
    Path(path).write_text(f"{self.request.hostname} {token}")
