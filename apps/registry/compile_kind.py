"""The `compile` job kind: a model version compiled for a target, validated, registered as a new staging version."""

from django.conf import settings
from rest_framework import serializers

from apps.core.artifact_storage import TRANSIENT_STORAGE_ERRORS
from apps.core.errors import DomainError
from apps.jobs.kinds import JobKind, PermanentJobError
from project import queues
from workers.compile_targets import DEFAULT_TOLERANCES, GPU_FP16, TARGETS

MAX_SAMPLE_VALUES = 1_000_000  # inline JSON samples are for small batches


def target_tolerance(target: str) -> dict:
    """The target's default tolerance, with `COMPILE_TOLERANCES` from the settings over it."""
    return {**DEFAULT_TOLERANCES[target], **settings.COMPILE_TOLERANCES.get(target, {})}


class CompileParams(serializers.Serializer):
    model = serializers.CharField(help_text="The source version: `name@N` (or `name@production`, `name@canary`).")
    target = serializers.ChoiceField(
        choices=TARGETS,
        help_text="cpu-optimized: onnxruntime graph optimisations; cpu-int8: dynamic int8 quantisation; "
        "gpu-fp16: float16 weights and compute, float32 inputs and outputs.",
    )
    tolerance = serializers.DictField(
        required=False,
        help_text="`max_abs_error` (>= 0, or null: not judged) and `min_cosine` (-1 to 1) the result must meet; "
        "defaults per target. The values used are stored on the job.",
    )
    sample_inputs = serializers.DictField(
        required=False,
        help_text="Validation inputs: input name -> nested list, samples along the first axis. "
        "Default: generated from the IO signature with `seed`.",
    )
    sample_rows = serializers.IntegerField(
        min_value=1, max_value=4096, default=32, help_text="Rows of generated samples."
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0, help_text="Seed of generated samples.")
    latency_runs = serializers.IntegerField(
        min_value=3, max_value=1000, default=20, help_text="Timed runs of source and result each (p50 is reported)."
    )
    # Filled in at submit: the version the reference resolved to.
    model_version_id = serializers.IntegerField(required=False)

    def validate(self, attrs):
        from apps.registry.services import model_version_get
        from workers.inference import InputValidationError, coerce_inline_inputs

        try:
            version = model_version_get(membership=self.context["membership"], reference=attrs["model"])
        except DomainError as exc:
            raise serializers.ValidationError({"model": [exc.message]}) from exc
        attrs["tolerance"] = self._tolerance(attrs["target"], attrs.get("tolerance") or {})
        if "sample_inputs" in attrs:
            try:
                arrays = coerce_inline_inputs(version.signature["inputs"], attrs["sample_inputs"])
            except InputValidationError as exc:
                key = f"sample_inputs.{exc.field}" if exc.field != "inputs" else "sample_inputs"
                raise serializers.ValidationError({key: [exc.message]}) from exc
            if sum(array.size for array in arrays.values()) > MAX_SAMPLE_VALUES:
                raise serializers.ValidationError({"sample_inputs": [f"At most {MAX_SAMPLE_VALUES} values inline."]})
        else:
            strings = [spec["name"] for spec in version.signature["inputs"] if spec["dtype"] == "string"]
            if strings:
                raise serializers.ValidationError(
                    {"sample_inputs": [f"Required: samples cannot be generated for string inputs {strings}."]}
                )
        attrs["model"] = f"{version.model.name}@{version.number}"
        attrs["model_version_id"] = version.pk
        return attrs

    @staticmethod
    def _tolerance(target: str, given: dict) -> dict:
        unknown = sorted(set(given) - {"max_abs_error", "min_cosine"})
        if unknown:
            raise serializers.ValidationError(
                {f"tolerance.{name}": ["Unknown tolerance; use max_abs_error or min_cosine."] for name in unknown}
            )
        limits = {"max_abs_error": (0.0, None), "min_cosine": (-1.0, 1.0)}
        for name, value in given.items():
            low, high = limits[name]
            if value is None and name == "max_abs_error":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise serializers.ValidationError({f"tolerance.{name}": ["Must be a number."]})
            if value < low or (high is not None and value > high):
                span = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
                raise serializers.ValidationError({f"tolerance.{name}": [f"Must be {span}."]})
        return {**target_tolerance(target), **given}


def _pick_queue(params: dict) -> str:
    # Only float16 needs a GPU to be judged fairly (its latency and kernels are the GPU's).
    if params["target"] != GPU_FP16:
        return queues.CPU
    from apps.jobs.routing import gpu_if_available

    return gpu_if_available()


def _execute(context) -> dict:
    from apps.core.artifact_storage import StoredFileCorrupt, local_copy
    from apps.jobs.runner import JobCancelled, LeaseLost
    from apps.jobs.services import job_output_workdir
    from apps.registry.models import ModelVersion
    from apps.registry.services import model_version_register_compiled
    from workers.compile import CompileCancelled, CompileError, run_compile
    from workers.inference import coerce_inline_inputs

    params = context.params
    source = ModelVersion.objects.select_related("model", "model__organization").get(pk=params["model_version_id"])
    samples = None
    if params.get("sample_inputs") is not None:
        samples = coerce_inline_inputs(source.signature["inputs"], params["sample_inputs"])
    # Compiled in a private directory that goes away whatever happens: only registration
    # below copies the file into the registry's storage, so a failed or cancelled compile
    # leaves neither a row nor a file.
    try:
        # Through this host's cache: fetched from the storage once, reused by later jobs.
        source_path = local_copy(source.file.name, sha256=source.sha256)
    except FileNotFoundError as exc:
        raise PermanentJobError("file_missing", f"The source model's file is missing: {exc}") from exc
    except StoredFileCorrupt as exc:
        raise PermanentJobError("file_corrupt", str(exc)) from exc
    with job_output_workdir(job_id=context.job_id, attempt=context.attempt) as workdir:
        output = workdir / "compiled.onnx"
        try:
            report = run_compile(
                source_path,
                target=params["target"],
                output_path=output,
                signature_inputs=source.signature["inputs"],
                sample_inputs=samples,
                sample_rows=params["sample_rows"],
                seed=params["seed"],
                tolerance=params["tolerance"],
                latency_runs=params["latency_runs"],
                source_sha256=source.sha256,
                report_progress=context.report_progress,
                should_cancel=context.should_cancel,
            )
        except CompileCancelled as exc:
            context.raise_if_cancelled()  # LeaseLost when it was the lease, not a cancel
            raise JobCancelled() from exc
        except CompileError as exc:
            raise PermanentJobError(exc.code, exc.message, exc.details) from exc
        context.raise_if_cancelled()
        registered = model_version_register_compiled(
            source=source,
            path=output,
            report=report,
            target=params["target"],
            job_id=context.job_id,
            attempt=context.attempt,
        )
    if registered is None:
        raise LeaseLost()
    version, created = registered
    return {
        "model": f"{version.model.name}@{version.number}",
        "version": version.number,
        "created": created,
        "source": params["model"],
        "target": params["target"],
        "passed": report["passed"],
        "report": report,
    }


COMPILE = JobKind(
    name="compile",
    description="Compile a model version for cpu-optimized, cpu-int8 or gpu-fp16, validate it against the source "
    "on sample inputs, and register it as a new staging version with the report.",
    params_serializer=CompileParams,
    execute=_execute,
    pick_queue=_pick_queue,
    soft_time_limit_s=1800,
    time_limit_s=1860,
    # Compiling is deterministic: a model that failed once fails again.
    default_max_attempts=2,
    transient_errors=TRANSIENT_STORAGE_ERRORS,
)
