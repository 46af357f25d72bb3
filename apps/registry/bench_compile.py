"""`manage.py bench compile`: each target's speed-up and error against the fp32 source, measured in one run."""

import tempfile
from pathlib import Path

from workers.compile import CPU_INT8, CPU_OPTIMIZED, GPU_FP16, default_threads, run_compile
from workers.onnx_models import inspect_model
from workers.testing_models import build_test_model

MODELS = ("mlp", "attention")


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=256, help="samples per run (the batch), default 256")
    parser.add_argument("--runs", type=int, default=30, help="timed runs of source and result each (median)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: all cores)")


def run(stdout, *, rows: int, runs: int, threads: int | None, **_) -> None:
    threads = threads or default_threads()
    stdout.write(
        f"fp32 source vs compiled result: batch {rows}, {threads} thread(s) each, warmed sessions, "
        f"median of {runs} alternating runs on the same generated inputs (seed 0)"
    )
    stdout.write(
        f"{'model':10} {'target':14} {'fp32 ms':>9} {'result ms':>9} {'speedup':>8} "
        f"{'max abs err':>11} {'cosine':>9} {'size':>6} passed"
    )
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as workdir:
        for kind in MODELS:
            source = build_test_model(kind, Path(workdir) / f"{kind}.onnx")
            signature = inspect_model(source, max_bytes=1 << 30).inputs
            for target in (CPU_INT8, CPU_OPTIMIZED, GPU_FP16):
                report = run_compile(
                    source,
                    target=target,
                    output_path=Path(workdir) / f"{kind}-{target}.onnx",
                    signature_inputs=signature,
                    sample_rows=rows,
                    latency_runs=runs,
                    threads=threads,
                )
                figures[(kind, target)] = report
                stdout.write(
                    f"{kind:10} {target:14} {report['latency_p50_ms_before']:9.3f} "
                    f"{report['latency_p50_ms_after']:9.3f} {report['speedup']:8.2f} "
                    f"{report['max_abs_error']:11.2e} {report['mean_cosine']:9.6f} {report['size_ratio']:6.2f} "
                    f"{report['passed']} ({report['provider']})"
                )
    mlp, attention = figures[("mlp", CPU_INT8)], figures[("attention", CPU_INT8)]
    stdout.write(
        f"int8_speedup={mlp['speedup']:.2f} int8_cosine={mlp['mean_cosine']:.5f} "
        f"int8_max_abs_error={mlp['max_abs_error']:.4f} "
        f"attention_int8_speedup={attention['speedup']:.2f} attention_int8_cosine={attention['mean_cosine']:.5f} "
        f"fp16_cpu_cosine={figures[('mlp', GPU_FP16)]['mean_cosine']:.6f} rows={rows} threads={threads}"
    )
