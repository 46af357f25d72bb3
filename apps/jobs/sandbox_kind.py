"""The `sandbox` job kind: untrusted Python on sandbox hosts, which see the broker only."""

import re

from rest_framework import serializers

from apps.jobs.kinds import JobKind
from project import queues
from workers.sandbox import judge
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
    test_cases = serializers.JSONField(
        required=False,
        help_text=f"Judge mode: up to {judge.MAX_TEST_CASES} cases, each {{stdin, expected_output, limits?}}; "
        "the program is compiled once and run per case, each case judged accepted or wrong_answer "
        "(or its limit or runtime verdict).",
    )
    compare = serializers.ChoiceField(
        choices=judge.COMPARE_RULES,
        required=False,
        help_text="Judge mode: `lines` (default; CRLF = LF, trailing spaces/tabs and trailing empty lines ignored) "
        "or `exact` (bytes equal).",
    )
    output_dir = serializers.CharField(
        required=False,
        max_length=255,
        help_text="Judge mode: a folder under /work whose files each case returns as artifacts "
        f"(at most {judge.MAX_FILES_PER_CASE} files and {judge.MAX_FILE_BYTES_PER_CASE} bytes per case).",
    )

    def validate_limits(self, value):
        # When `limits` is left out, its default ({}) skips the nested serializer's defaults.
        return {name: value.get(name, field.default) for name, field in SandboxLimitsParams().fields.items()}

    def validate(self, attrs):
        judged = "test_cases" in attrs
        if not judged:
            extra = [name for name in ("compare", "output_dir") if name in attrs]
            if extra:
                raise serializers.ValidationError({name: ["Only with test_cases (judge mode)."] for name in extra})
        elif attrs.get("stdin"):
            raise serializers.ValidationError({"stdin": ["With test_cases, each case carries its own stdin."]})
        try:
            limits = SandboxLimits(**attrs["limits"])
            if not judged:
                SandboxRequest(source=attrs["source"], files=attrs["files"], stdin=attrs["stdin"], limits=limits)
                return attrs
            cases, errors = _validate_test_cases(attrs["test_cases"], attrs["limits"])
            if errors:
                raise serializers.ValidationError(errors)
            attrs["test_cases"] = cases
            judge.JudgeRequest(
                source=attrs["source"],
                files=attrs["files"],
                limits=limits,
                test_cases=tuple(
                    judge.JudgeCase(
                        stdin=case["stdin"],
                        expected_output=case["expected_output"],
                        limits=SandboxLimits(**{**attrs["limits"], **case["limits"]}) if case.get("limits") else None,
                    )
                    for case in cases
                ),
                compare=attrs.get("compare", "lines"),
                output_dir=attrs.get("output_dir"),
            )
        except SandboxRequestError as exc:
            raise serializers.ValidationError({exc.field: [exc.message]}) from exc
        return attrs


class TestCaseLimitsParams(serializers.Serializer):
    """A case's own limits: any of the submission's, each at most the submission's value."""

    cpu_seconds = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["cpu_seconds"], required=False)
    wall_seconds = serializers.FloatField(min_value=0.1, max_value=SYSTEM_MAXIMUM["wall_seconds"], required=False)
    memory_mb = serializers.IntegerField(min_value=16, max_value=SYSTEM_MAXIMUM["memory_mb"], required=False)
    processes = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["processes"], required=False)
    output_bytes = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["output_bytes"], required=False)
    file_size_mb = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["file_size_mb"], required=False)
    tmpfs_mb = serializers.IntegerField(min_value=1, max_value=SYSTEM_MAXIMUM["tmpfs_mb"], required=False)


class TestCaseParams(serializers.Serializer):
    stdin = serializers.CharField(
        allow_blank=True, trim_whitespace=False, default="", max_length=judge.MAX_CASE_TEXT_BYTES
    )
    expected_output = serializers.CharField(
        allow_blank=True, trim_whitespace=False, max_length=judge.MAX_CASE_TEXT_BYTES
    )
    limits = TestCaseLimitsParams(required=False)

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown parameter."] for name in unknown})
        return attrs


def _case_errors(index: int, errors, prefix: str = "") -> dict[str, list[str]]:
    """Nested serializer errors as flat names: `test_cases[3].limits.cpu_seconds`."""
    flat: dict[str, list[str]] = {}
    for name, messages in errors.items():
        path = f"{prefix}{name}"
        if isinstance(messages, dict):
            flat.update(_case_errors(index, messages, prefix=f"{path}."))
        else:
            key = f"test_cases[{index}]" if name == "non_field_errors" and not prefix else f"test_cases[{index}].{path}"
            flat[key] = [str(message) for message in messages]
    return flat


def _validate_test_cases(raw, limits: dict) -> tuple[list[dict], dict[str, list[str]]]:
    if not isinstance(raw, list):
        return [], {"test_cases": ["Must be a list of test cases."]}
    if not 1 <= len(raw) <= judge.MAX_TEST_CASES:
        return [], {"test_cases": [f"Between 1 and {judge.MAX_TEST_CASES} test cases."]}
    cases, errors = [], {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            errors[f"test_cases[{index}]"] = ["Must be an object with stdin and expected_output."]
            continue
        serializer = TestCaseParams(data=item)
        if not serializer.is_valid():
            errors.update(_case_errors(index, serializer.errors))
            continue
        case = dict(serializer.validated_data)
        for name, value in (case.get("limits") or {}).items():
            if value > limits[name]:
                errors[f"test_cases[{index}].limits.{name}"] = [f"At most the submission's {name} ({limits[name]})."]
        cases.append(case)
    return cases, errors


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


# A judge case's output file, relative to its output folder (workers/sandbox/harness.py).
OUTPUT_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}){0,7}")
# What a sandbox host may send in chunks before its outcome: a long stream, or a judge case's file.
REMOTE_STREAM = re.compile(r"stdout|stderr|file-[0-9]{1,2}-[0-9]{1,3}")
# A run's `ok` and a judge submission's `accepted` succeed the job; any other verdict fails it.
SUCCESS_VERDICTS = ("ok", "accepted")


def sandbox_lease_wall_seconds(params: dict) -> float:
    """How long a sandbox host may hold the job before reporting: one run's wall limit, or a submission's sum."""
    wall = float((params.get("limits") or {}).get("wall_seconds", DEFAULTS.wall_seconds))
    cases = params.get("test_cases") or []
    # A submission: the compile step at the submission's limit, then each case at its own.
    return wall + sum(float((case.get("limits") or {}).get("wall_seconds", wall)) for case in cases)


def sandbox_announced_artifacts(outcome: dict) -> list[tuple[str, str, object, dict, str]]:
    """What an outcome says arrived in chunks, as (stream, artifact name, chunk count, entry, key).

    The job keeps each as an artifact named `name` and notes its id in `entry[key]`: the long
    streams (`stdout_artifact`) and, for a judge submission, each case's output files
    (`cases[i].files[j].artifact`, named `case-<i>/<path>`).
    """
    announced = [
        (stream, stream, outcome.pop(f"{stream}_artifact_chunks", None), outcome, f"{stream}_artifact")
        for stream in ("stdout", "stderr")
    ]
    for case in outcome.get("cases") or []:
        for entry in case.get("files") or [] if isinstance(case, dict) else []:
            stream, path = entry.get("stream"), entry.get("path")
            chunks = entry.pop("chunks", None)
            named = isinstance(stream, str) and REMOTE_STREAM.fullmatch(stream) and stream.startswith("file-")
            if named and isinstance(path, str) and OUTPUT_PATH.fullmatch(path) and ".." not in path:
                announced.append((stream, f"case-{case.get('index')}/{path}", chunks, entry, "artifact"))
    return announced


def _message(job) -> tuple[str, list]:
    # The sandbox host has no database: the request travels in the message, with the run's token
    # (its key for reporting this dispatch, and only this one: services.sandbox_runs).
    from apps.jobs.services.sandbox_runs import sandbox_run_token

    return "sandbox.execute", [str(job.id), job.params, sandbox_run_token(job_id=str(job.id), task_id=job.task_id)]


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
