"""The registry of job kinds: each declares its parameters, its queue, its time limits and its executor."""

from collections.abc import Callable
from dataclasses import dataclass, field

from rest_framework import serializers

from project import queues
from workers.errors import JobError

# Executors raise it (or a subclass such as ModelValidationError) to fail a job at once.
PermanentJobError = JobError


@dataclass(frozen=True)
class AwaitChildren:
    """What a fan-out kind's `execute` returns once its children are submitted.

    The job stays `running` without a lease (nothing runs for it any more) until its last
    child ends; then the kind's `aggregate` runs on `control` and finishes it.
    """

    children: int


@dataclass(frozen=True)
class JobKind:
    name: str
    description: str
    params_serializer: type[serializers.Serializer]
    # execute(context) -> result dict; runs in the worker process.
    execute: Callable[..., dict]
    # pick_queue(params) -> queue name; called at submit.
    pick_queue: Callable[[dict], str]
    soft_time_limit_s: int
    time_limit_s: int
    default_max_attempts: int = 3
    # Only these exceptions are retried (with backoff); anything else fails the job.
    transient_errors: tuple[type[BaseException], ...] = field(default=())
    # message(job) -> (task name, args) for kinds whose host cannot read the Job row
    # (sandbox); default: a doorbell for the job's queue (`workers.claim_next(queue)`).
    message: Callable[..., tuple[str, list]] | None = None
    # Cancel kills the running task (revoke with terminate) instead of waiting for a check.
    terminate_on_cancel: bool = False
    # Fan-out kinds: aggregate(parent, children) -> result dict, run on `control` when the
    # last child of a parent whose `execute` returned AwaitChildren has ended.
    aggregate: Callable[..., dict] | None = None


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.time_limit_s > queues.MAX_TASK_TIME_LIMIT_S:
        raise ValueError(f"{kind.name}: time limit {kind.time_limit_s}s exceeds {queues.MAX_TASK_TIME_LIMIT_S}s")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind | None:
    return _KINDS.get(name)


def all_kinds() -> dict[str, JobKind]:
    return dict(_KINDS)


# --- built-in: sleep ---------------------------------------------------------------------


class SleepParams(serializers.Serializer):
    duration_s = serializers.FloatField(
        min_value=0, max_value=3600, default=0, help_text="Total time to wait, in seconds."
    )
    steps = serializers.IntegerField(
        min_value=1, max_value=10000, default=1, help_text="Progress is reported and cancellation checked per step."
    )
    queue = serializers.ChoiceField(
        choices=[queues.CPU, queues.GPU], default=queues.CPU, help_text="Which worker queue runs it."
    )
    fail_first_attempts = serializers.IntegerField(
        min_value=0, max_value=10, default=0, help_text="Drill: the first N attempts fail with a transient error."
    )
    snooze_first_s = serializers.FloatField(
        min_value=0,
        max_value=3600,
        default=0,
        help_text="Drill: the first attempt snoozes this long before working (no attempt is used).",
    )


def _execute_sleep(context) -> dict:
    from workers.sleep import run_sleep

    params = context.params
    return run_sleep(
        duration_s=params["duration_s"],
        steps=params["steps"],
        fail_first_attempts=params["fail_first_attempts"],
        attempt=context.attempt,
        snooze_first_s=params.get("snooze_first_s", 0),
        snooze=context.snooze,
        report_progress=context.report_progress,
        raise_if_cancelled=context.raise_if_cancelled,
    )


def register_builtin_kinds() -> None:
    from apps.jobs.sandbox_kind import SANDBOX
    from workers.sleep import TransientDrillError

    register(SANDBOX)

    register(
        JobKind(
            name="sleep",
            description="Wait for a duration in steps: for testing queues, workers and the job path.",
            params_serializer=SleepParams,
            execute=_execute_sleep,
            pick_queue=lambda params: params["queue"],
            soft_time_limit_s=3700,
            time_limit_s=3760,
            transient_errors=(TransientDrillError,),
        )
    )
