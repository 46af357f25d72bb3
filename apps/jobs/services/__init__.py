"""The jobs app's business rules, one module per concern.

- lifecycle:     every state transition of a job and the invariants they keep (read it first)
- submit:        validation, admission and idempotency in front of the first transition
- dispatch:      every broker message about jobs (doorbells, run messages, revokes)
- housekeeping:  the reaper and the ring (recovery by state)
- actions:       cancel, retry, requeue and queue pause, as people ask for them
- fanout:        parents and their children
- hosts:         the worker host registry
- sandbox_runs:  outcomes reported by hosts without database access
- artifacts:     files jobs produce and inputs users upload
- schedules:     periodic jobs, fired once per period by the dispatcher
- retention:     pruning finished jobs, their events and files
- control:       the record of each housekeeping run (for /metrics)

Callers use the names below (`from apps.jobs import services; services.job_submit(...)`).
"""

from apps.jobs.services.actions import job_cancel, job_requeue, job_retry, jobs_retry_many, queue_set_paused
from apps.jobs.services.artifacts import artifact_upload, job_artifact_add, job_output_name, job_output_workdir
from apps.jobs.services.control import control_run, control_run_record
from apps.jobs.services.dispatch import (
    DOORBELL_TASK,
    PAUSABLE_QUEUES,
    PULLED_QUEUES,
    RUN_JOB_TASK,
    doorbell_time_limit_s,
    is_pulled,
    job_dispatch,
    jobs_publish_group,
    ring_doorbells,
)
from apps.jobs.services.fanout import job_children_changed, job_children_submit
from apps.jobs.services.hosts import (
    sandbox_host_report,
    worker_host_heartbeat,
    worker_host_register,
    worker_host_report,
    worker_host_stopped,
)
from apps.jobs.services.housekeeping import jobs_reap, jobs_ring, leader_turn
from apps.jobs.services.lifecycle import (
    job_await_children,
    job_claim,
    job_claim_next,
    job_finish,
    job_finish_and_claim_next,
    job_heartbeat,
    job_progress,
    job_retry_later,
    job_snooze,
    retry_backoff_s,
)
from apps.jobs.services.retention import jobs_prune, prune_counts
from apps.jobs.services.sandbox_runs import (
    RemoteOutputIncomplete,
    remote_run_finished,
    remote_run_output,
    remote_run_started,
    sandbox_report_open,
    sandbox_report_refuse,
    sandbox_run_token,
)
from apps.jobs.services.schedules import (
    next_period_after,
    schedule_create,
    schedule_delete,
    schedule_update,
    schedules_dispatch,
)
from apps.jobs.services.submit import job_submit, jobs_submit_bulk

__all__ = [
    "DOORBELL_TASK",
    "PAUSABLE_QUEUES",
    "PULLED_QUEUES",
    "RUN_JOB_TASK",
    "RemoteOutputIncomplete",
    "artifact_upload",
    "control_run",
    "control_run_record",
    "doorbell_time_limit_s",
    "is_pulled",
    "job_artifact_add",
    "job_await_children",
    "job_cancel",
    "job_children_changed",
    "job_children_submit",
    "job_claim",
    "job_claim_next",
    "job_dispatch",
    "job_finish",
    "job_finish_and_claim_next",
    "job_heartbeat",
    "job_output_name",
    "job_output_workdir",
    "job_progress",
    "job_requeue",
    "job_retry",
    "job_retry_later",
    "job_snooze",
    "job_submit",
    "jobs_prune",
    "jobs_publish_group",
    "jobs_reap",
    "jobs_retry_many",
    "jobs_ring",
    "jobs_submit_bulk",
    "leader_turn",
    "next_period_after",
    "prune_counts",
    "queue_set_paused",
    "remote_run_finished",
    "remote_run_output",
    "remote_run_started",
    "retry_backoff_s",
    "ring_doorbells",
    "sandbox_host_report",
    "sandbox_report_open",
    "sandbox_report_refuse",
    "sandbox_run_token",
    "schedule_create",
    "schedule_delete",
    "schedule_update",
    "schedules_dispatch",
    "worker_host_heartbeat",
    "worker_host_register",
    "worker_host_report",
    "worker_host_stopped",
]
