"""Tasks of the core app."""

from celery import shared_task


@shared_task(name="bench.noop", ignore_result=True)
def noop(counter_path: str) -> None:
    """The baseline of `manage.py bench jobs`: a bare Celery task whose only effect is one appended byte."""
    with open(counter_path, "ab") as counter:
        counter.write(b".")
