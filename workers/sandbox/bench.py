"""How much a sandbox run costs over starting the same Python bare: `python -m workers.sandbox.bench`."""

import json
import statistics
import subprocess
import time

from workers.sandbox.runner import SandboxRequest, run_sandbox, sandbox_interpreter


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure_overhead(n: int = 20, slot: int | None = None) -> dict:
    """Median wall time of a sandboxed `print(1)` against a bare `python -I -S -c 'print(1)'`.

    Both use the interpreter the sandbox runs, so the difference is bwrap, the namespaces and
    the bookkeeping. One warm-up run each is left out of the samples (page cache).
    """
    interpreter = sandbox_interpreter()
    if interpreter is None:
        raise RuntimeError("no sandbox interpreter on this host")
    request = SandboxRequest(source="print(1)")
    bare_argv = [interpreter.executable, "-I", "-S", "-c", "print(1)"]

    sandboxed, bare = [], []
    for index in range(n + 1):
        started = time.perf_counter()
        result = run_sandbox(request, slot=slot)
        elapsed = time.perf_counter() - started
        if result.verdict != "ok" or result.stdout != "1\n":
            raise RuntimeError(f"sandbox run failed: {result.verdict}: {result.message}")
        if index:
            sandboxed.append(elapsed)

        started = time.perf_counter()
        subprocess.run(bare_argv, check=True, capture_output=True)
        elapsed = time.perf_counter() - started
        if index:
            bare.append(elapsed)

    sandbox_ms, bare_ms = _median_ms(sandboxed), _median_ms(bare)
    return {
        "n": n,
        "interpreter": interpreter.executable,
        "sandbox_median_ms": sandbox_ms,
        "bare_median_ms": bare_ms,
        "overhead_ms": round(sandbox_ms - bare_ms, 2),
        "ratio": round(sandbox_ms / bare_ms, 2),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Sandboxed print(1) against a bare interpreter start.")
    parser.add_argument("--n", type=int, default=20, help="runs per side (default 20)")
    parser.add_argument("--slot", type=int, default=None, help="sandbox slot (default: a free one of the host)")
    arguments = parser.parse_args()
    print(json.dumps(measure_overhead(n=arguments.n, slot=arguments.slot), indent=2))
