"""The gate between the sandbox tier and `control`: reads `sandbox_reports`, forwards what is a report.

Every sandbox host may write `sandbox_reports`, so a message there may say anything. Consuming it
as a Celery task queue would run whatever task it names (any task a control worker knows); the
gate instead reads it with a plain kombu consumer inside each control worker (a consumer bootstep,
as Celery's docs show for custom message consumers) and forwards a report only as the one task its
kind maps to, with the payload and MAC untouched. Whether the report may change anything (its MAC,
the run it names) is decided by that task's service, on a pool process with the database; the gate
only checks the envelope and never touches the database, so it cannot slow the worker's event loop.
"""

import logging

from celery import bootsteps
from kombu import Consumer

from project import queues
from workers.sandbox import reports

logger = logging.getLogger(__name__)

REPORT_TASKS = {
    reports.STARTED: "jobs.sandbox_started",
    reports.OUTPUT: "jobs.sandbox_output",
    reports.FINISHED: "jobs.sandbox_finished",
    reports.HOST: "jobs.sandbox_host_report",
}
# The largest report: an outcome with two 64 KB inline heads and a judge submission's case list,
# or one output chunk (MAX_OUTPUT_CHUNK_B64) in JSON. Anything larger is not forwarded.
MAX_PAYLOAD_CHARS = 4 * 1024 * 1024


class SandboxReportGate(bootsteps.ConsumerStep):
    """Consume `sandbox_reports` on workers that consume `control` (and only there)."""

    def __init__(self, c, **kwargs):
        self.c = c
        super().__init__(c, **kwargs)

    def get_consumers(self, channel):
        if queues.CONTROL not in self.c.app.amqp.queues.consume_from:
            return []
        return [
            Consumer(
                channel,
                queues=[queues.sandbox_reports_queue()],
                callbacks=[self.on_report],
                accept=["json"],
                prefetch_count=16,
            )
        ]

    def on_report(self, body, message) -> None:
        try:
            forward(self.c.app, body)
        except Exception:
            # Not acked: the broker gives it back (Redis after the visibility timeout, RabbitMQ
            # when this channel closes); the report's effect is idempotent (fenced by its dispatch).
            logger.exception("sandbox.report_forward_failed")
            return
        message.ack()


def forward(app, body) -> str:
    """Publish the task for one report (or the refusal of something that is none); the task's name."""
    report = body.get("report") if isinstance(body, dict) else None
    payload = body.get("payload") if isinstance(body, dict) else None
    mac = body.get("mac") if isinstance(body, dict) else None
    if report not in REPORT_TASKS or not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
        reason = "unknown_report" if report not in REPORT_TASKS else "malformed"
        name, args = "jobs.sandbox_report_refused", [str(report)[:32], reason]
    elif report == reports.HOST:
        name, args = REPORT_TASKS[report], [payload]
    else:
        name, args = REPORT_TASKS[report], [payload, mac if isinstance(mac, str) else None]
    app.send_task(name, args=args, queue=queues.direct_queue(queues.CONTROL))
    return name
