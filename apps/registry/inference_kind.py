"""The `inference` job kind: a registered model version over inline or uploaded inputs, outputs as an .npz artifact."""

from rest_framework import serializers

from apps.core.artifact_storage import TRANSIENT_STORAGE_ERRORS
from apps.core.errors import DomainError
from apps.jobs.kinds import JobKind, PermanentJobError
from project import queues

MAX_INLINE_ROWS_VALUES = 1_000_000  # inline JSON is for small batches
# A model that may not be split into batches (rows not independent, or no batch axis: see
# ModelVersion.batching) runs its whole input in one onnxruntime call, so the input must fit
# a worker's memory at once, with its outputs and onnxruntime's intermediates beside it.
MAX_UNSPLIT_INPUT_BYTES = 512 * 1024 * 1024


class InferenceParams(serializers.Serializer):
    model = serializers.CharField(
        help_text="`name` (production, or canary by weight), `name@N` (any version, from its upload on), "
        "`name@production`, `name@canary` or a named alias `name@<alias>`."
    )
    inputs = serializers.DictField(
        required=False,
        help_text="Inline inputs (small batches): input name -> nested list, batch along the first axis.",
    )
    inputs_artifact = serializers.UUIDField(
        required=False,
        help_text="Instead of `inputs`: the id of an uploaded .npy/.npz (POST /api/v1/artifacts/), for large batches.",
    )
    batch_size = serializers.IntegerField(min_value=1, max_value=65536, default=256)
    outputs = serializers.ListField(
        child=serializers.CharField(), required=False, default=list, help_text="Outputs to keep (default: all)."
    )
    # Filled in at submit: the version the reference resolved to, so a canary is chosen once.
    model_version_id = serializers.IntegerField(required=False)

    def validate(self, attrs):
        from apps.registry.services import model_version_get

        membership = self.context["membership"]
        if ("inputs" in attrs) == ("inputs_artifact" in attrs):
            message = "Give either `inputs` (inline) or `inputs_artifact` (an uploaded .npy/.npz), not both."
            if "inputs" not in attrs:
                message = "Give `inputs` (inline) or `inputs_artifact` (the id of an uploaded .npy/.npz)."
            raise serializers.ValidationError({"inputs": [message]})
        try:
            version = model_version_get(membership=membership, reference=attrs["model"])
        except DomainError as exc:
            raise serializers.ValidationError({"model": [exc.message]}) from exc
        if "inputs" in attrs:
            _check_inline_inputs(version, attrs["inputs"])
        else:
            _check_inputs_artifact(membership, version, attrs["inputs_artifact"])
        known = {tensor["name"] for tensor in version.signature["outputs"]}
        unknown = [name for name in attrs["outputs"] if name not in known]
        if unknown:
            raise serializers.ValidationError(
                {"outputs": [f"Unknown outputs {unknown}; the model has {sorted(known)}."]}
            )
        attrs["model"] = f"{version.model.name}@{version.number}"
        attrs["model_version_id"] = version.pk
        return attrs


def _check_inline_inputs(version, inputs: dict) -> None:
    from workers.inference import InputValidationError, coerce_inline_inputs

    try:
        arrays = coerce_inline_inputs(version.signature["inputs"], inputs)
    except InputValidationError as exc:
        raise serializers.ValidationError(
            {f"inputs.{exc.field}" if exc.field != "inputs" else "inputs": [exc.message]}
        ) from exc
    if sum(array.size for array in arrays.values()) > MAX_INLINE_ROWS_VALUES:
        raise serializers.ValidationError(
            {"inputs": [f"At most {MAX_INLINE_ROWS_VALUES} values inline; upload larger batches as inputs_artifact."]}
        )
    _check_rows(version, arrays, "inputs")


def _check_rows(version, arrays: dict, field: str) -> None:
    """Refuse at submit what the worker could not run: 0 rows where the model cannot take them, or an
    input too large to run whole for a model whose rows may not be split."""
    batching = version.batching or {}
    empty = [name for name, array in arrays.items() if array.ndim and array.shape[0] == 0]
    if empty and batching.get("batch_axis") and batching.get("zero_rows") is False:
        raise serializers.ValidationError(
            {
                field: [
                    f"Input '{empty[0]}' has 0 rows, and this model cannot run 0 rows (found when it was "
                    "uploaded): send at least one row."
                ]
            }
        )
    if not batching.get("split"):
        size = sum(array.size * array.dtype.itemsize for array in arrays.values())
        if size > MAX_UNSPLIT_INPUT_BYTES:
            why = batching.get("reason") or "it has not been probed"
            raise serializers.ValidationError(
                {
                    field: [
                        f"The inputs take {size} bytes; this model runs its whole input in one call ({why}), "
                        f"which is limited to {MAX_UNSPLIT_INPUT_BYTES} bytes: send fewer rows per job."
                    ]
                }
            )


def _check_inputs_artifact(membership, version, artifact_id) -> None:
    """The upload exists in this organization and its arrays match the signature (headers only, no data read)."""
    from apps.core.artifact_storage import StoredFileCorrupt, local_copy
    from apps.jobs.selectors import input_artifact_get
    from workers.inference import InputValidationError, load_array_inputs, validate_inputs

    try:
        artifact = input_artifact_get(membership=membership, artifact_id=artifact_id)
    except DomainError as exc:
        raise serializers.ValidationError({"inputs_artifact": [f"{exc.message} ({artifact_id})"]}) from exc
    names = [tensor["name"] for tensor in version.signature["inputs"]]
    try:
        # Headers only: the check costs the same for ten rows or ten million, and never
        # inflates a compressed member in the web process.
        path = local_copy(artifact.file.name, sha256=artifact.sha256)
        arrays = load_array_inputs(path, names, headers_only=True)
        validate_inputs(version.signature["inputs"], arrays)
        _check_rows(version, arrays, "inputs_artifact")
    except InputValidationError as exc:
        raise serializers.ValidationError({"inputs_artifact": [exc.message]}) from exc
    except (OSError, StoredFileCorrupt) as exc:
        raise serializers.ValidationError({"inputs_artifact": [f"The upload cannot be read: {exc}"]}) from exc


def _pick_queue(params: dict) -> str:
    from apps.jobs.routing import gpu_if_available
    from apps.registry.models import DevicePreference, ModelVersion

    preference = ModelVersion.objects.values_list("device_preference", flat=True).get(pk=params["model_version_id"])
    if preference == DevicePreference.CPU:
        return queues.CPU
    return gpu_if_available()


def _execute(context) -> dict:
    from apps.core.artifact_storage import StoredFileCorrupt, local_copy
    from apps.jobs.models import Artifact
    from apps.jobs.runner import JobCancelled, LeaseLost
    from apps.jobs.services import job_artifact_add, job_output_workdir
    from apps.registry.models import ModelVersion
    from workers.inference import (
        InferenceCancelled,
        InferenceError,
        coerce_inline_inputs,
        load_array_inputs,
        run_inference,
    )

    params = context.params
    version = ModelVersion.objects.select_related("model").get(pk=params["model_version_id"])
    input_names = [tensor["name"] for tensor in version.signature["inputs"]]
    artifact = None
    if params.get("inputs_artifact"):
        artifact = Artifact.objects.filter(
            pk=params["inputs_artifact"], organization_id=context.organization_id, job__isnull=True
        ).first()
        if artifact is None:
            raise PermanentJobError(
                "inputs_missing", f"The uploaded inputs {params['inputs_artifact']} no longer exist.", {}
            )
    try:
        # Through this host's cache: fetched from the storage once, reused by later jobs.
        model_path = local_copy(version.file.name, sha256=version.sha256)
        inputs_path = local_copy(artifact.file.name, sha256=artifact.sha256) if artifact is not None else None
    except FileNotFoundError as exc:
        raise PermanentJobError("file_missing", f"A stored file of this job is missing: {exc}", {}) from exc
    except StoredFileCorrupt as exc:
        raise PermanentJobError(
            "file_corrupt", str(exc), {"expected_sha256": exc.expected, "actual_sha256": exc.actual}
        ) from exc
    with job_output_workdir(job_id=context.job_id, attempt=context.attempt) as workdir:
        output_path = workdir / "outputs.npz"
        try:
            if inputs_path is not None:
                inputs = load_array_inputs(inputs_path, input_names)
            else:
                inputs = coerce_inline_inputs(version.signature["inputs"], params["inputs"])
            summary = run_inference(
                model_path,
                sha256=version.sha256,
                inputs=inputs,
                batch_size=params["batch_size"],
                # Split only what the upload-time probe found safe to split (rows independent).
                split_rows=bool((version.batching or {}).get("split")),
                output_path=output_path,
                wanted_outputs=params["outputs"] or None,
                device_preference=version.device_preference,
                on_progress=lambda done, total: context.report_progress(
                    done / total if total else 1.0, f"{done}/{total} rows"
                ),
                should_cancel=context.should_cancel,
            )
        except InferenceCancelled as exc:
            raise JobCancelled() from exc
        except InferenceError as exc:
            raise PermanentJobError(exc.code, exc.message, exc.details) from exc
        if not job_artifact_add(
            job_id=context.job_id,
            attempt=context.attempt,
            path=output_path,
            name="outputs.npz",
            sha256=summary["output_sha256"],
            content_type="application/x-npz",
        ):
            raise LeaseLost()
    source = {"inputs_artifact": params["inputs_artifact"]} if inputs_path is not None else {}
    return {"model": params["model"], **source, **summary}


INFERENCE = JobKind(
    name="inference",
    description=(
        "Run a registered ONNX model version in batches over inline inputs or an uploaded .npy/.npz "
        "(inputs_artifact); outputs as an .npz artifact."
    ),
    params_serializer=InferenceParams,
    execute=_execute,
    pick_queue=_pick_queue,
    soft_time_limit_s=3600,
    time_limit_s=3660,
    transient_errors=TRANSIENT_STORAGE_ERRORS,
)
