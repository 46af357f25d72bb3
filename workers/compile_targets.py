"""The compile targets and their default tolerances, without the converters (workers/compile.py).

Commands, the API and the admin name the targets; importing workers.compile for that would load
onnx (~0.6 s) at every start.
"""

CPU_OPTIMIZED, CPU_INT8, GPU_FP16 = "cpu-optimized", "cpu-int8", "gpu-fp16"
TARGETS = (CPU_OPTIMIZED, CPU_INT8, GPU_FP16)

# What a result must meet to pass. An optimised graph computes the same function (only
# fused kernels reorder float additions); float16 keeps ~3 significant digits; dynamic
# int8 keeps the direction of outputs but its absolute error scales with the model's
# output magnitude, so only cosine is judged by default (a job may add max_abs_error).
DEFAULT_TOLERANCES: dict[str, dict[str, float | None]] = {
    CPU_OPTIMIZED: {"max_abs_error": 1e-3, "min_cosine": 0.9999},
    CPU_INT8: {"max_abs_error": None, "min_cosine": 0.99},
    GPU_FP16: {"max_abs_error": 5e-2, "min_cosine": 0.999},
}
