"""The `sandbox` job kind: untrusted Python on sandbox hosts, which see the broker only."""

from rest_framework import serializers

from apps.jobs.kinds import JobKind
from project import queues
from workers.sandbox.runner import (
    INLINE_OUTPUT_BYTES,
    SYSTEM_MAXIMUM,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
)

MAX_SOURCE_BYTES = 1_000_000
# The longest string an outcome may store: an inline stream's head as display text (each byte at
# most 4 characters when escaped) or base64.
MAX_OUTCOME_STRING = 4 * INLINE_OUTPUT_BYTES
DEFAULTS = SandboxLimits()


class SandboxLimitsParams(serializers.Serializer):
    cpu_seconds = serializers.IntegerField(
        min_value=1, max_value=SYSTEM_MAXIMUM["cpu_seconds"], default=DEFAULTS.cpu_seconds
    )
    wall_seconds = serializers.FloatField(
        min_value=0.1, max_value=SYSTEM_MAXIMUM["wall_seconds"], default=DEFAULTS.wall_seconds
    )
    memory_mb = serializers.IntegerField(
        min_value=16, max_value=SYSTEM_MAXIMUM["memory_mb"], default=DEFAULTS.memory_mb
    )
    processes = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["processes"], default=DEFAULTS.processes)
    output_bytes = serializers.IntegerField(
        min_value=1, max_value=SYSTEM_MAXIMUM["output_bytes"], default=DEFAULTS.output_bytes
    )
    file_size_mb = serializers.IntegerField(
        min_value=1, max_value=SYSTEM_MAXIMUM["file_size_mb"], default=DEFAULTS.file_size_mb
    )
    tmpfs_mb = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["tmpfs_mb"], default=DEFAULTS.tmpfs_mb)


class SandboxParams(serializers.Serializer):
    source = serializers.CharField(
        max_length=MAX_SOURCE_BYTES,
        trim_whitespace=False,
        help_text="Python source, run as /code/main.py with /work as working directory.",
    )
    files = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        default=dict,
        help_text="Extra files placed in /work: plain name -> text content.",
    )
    stdin = serializers.CharField(allow_blank=True, trim_whitespace=False, default="", help_text="Standard input.")
    limits = SandboxLimitsParams(default=dict, help_text="CPU s, wall s, memory MB, processes, output bytes, ...")

    def validate_limits(self, value):
        # When `limits` is left out, its default ({}) skips the nested serializer's defaults.
        return {name: value.get(name, field.default) for name, field in SandboxLimitsParams().fields.items()}

    def validate(self, attrs):
        try:
            SandboxRequest(
                source=attrs["source"],
                files=attrs["files"],
                stdin=attrs["stdin"],
                limits=SandboxLimits(**attrs["limits"]),
            )
        except SandboxRequestError as exc:
            raise serializers.ValidationError({exc.field: [exc.message]}) from exc
        return attrs


def sandbox_outcome_for_storage(outcome: dict) -> dict:
    """The outcome a sandbox host reported, as the job row may keep it: no NUL, no string over the cap.

    The host already sends display text and capped heads (SandboxResult.to_message); this holds
    even for a host that does not, because jsonb refuses U+0000 and a refused finish left the
    job `running` until its lease expired, with no verdict.
    """
    cleaned = _storable(outcome)
    return cleaned if isinstance(cleaned, dict) else {"verdict": "internal_error", "message": "malformed outcome"}


def _storable(value: object) -> object:
    if isinstance(value, str):
        return value[:MAX_OUTCOME_STRING].replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {str(key).replace("\x00", ""): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _message(job) -> tuple[str, list]:
    # The sandbox host has no database: the request travels in the message.
    return "sandbox.execute", [str(job.id), job.params]


def _never_runs_here(context) -> dict:
    raise RuntimeError("sandbox jobs run on sandbox hosts through sandbox.execute, not workers.run_job")


SANDBOX = JobKind(
    name="sandbox",
    description="Run untrusted Python under bubblewrap: no network, read-only system, private tmpfs, limits.",
    params_serializer=SandboxParams,
    execute=_never_runs_here,
    pick_queue=lambda params: queues.SANDBOX,
    soft_time_limit_s=SYSTEM_MAXIMUM["wall_seconds"] + 60,
    time_limit_s=SYSTEM_MAXIMUM["wall_seconds"] + 90,
    # A program's own failure is its verdict, never retried; only an infrastructure error (the
    # sandbox could not be set up on the host that took it) runs the job again.
    default_max_attempts=3,
    message=_message,
    terminate_on_cancel=True,
)
