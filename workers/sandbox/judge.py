"""Judge-style submissions: one program, compiled once, run in a fresh sandbox per test case and judged.

Plain data in and out, no Django (like runner.py). The program is compiled to bytecode once, in a
sandbox of its own (a syntax error is the submission's `compile_error`, and no case runs); each
case then runs that bytecode in a fresh sandbox with the case's stdin and limits, and its stdout
is compared with the expected output (COMPARE_RULES). The next cases' sandboxes are started
ahead in spare slots while a case runs, and wait for their turn (SANDBOXES_AHEAD, decision 0050).
With an output folder, the files the program leaves there come back per case (harness.py),
capped in count and size.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.sandbox.runner import (
    SYSTEM_MAXIMUM,
    OutputFolder,
    PreparedProgram,
    PreparedSandbox,
    SandboxLimits,
    SandboxRequest,
    SandboxRequestError,
    SandboxResult,
    display_text,
    held_slots,
    prepare_sandbox,
    run_sandbox,
)
from workers.sandbox.slots import NoFreeSlot

logger = logging.getLogger(__name__)

CASE_VERDICTS = ("accepted", "wrong_answer", "runtime_error", "timeout", "memory_limit", "output_limit", "killed")
# The submission's verdict adds compile_error (no case ran) and internal_error (the sandbox failed).
SUMMARY_VERDICTS = (*CASE_VERDICTS, "compile_error", "internal_error")

MAX_TEST_CASES = 64
# Cases whose sandboxes start ahead while a case runs, each in a spare slot of its own (decision
# 0050): a sandbox's start (~60 ms: bwrap's namespaces and mounts, the interpreter) then overlaps
# the cases before it instead of following them.
SANDBOXES_AHEAD = 2
# Each case's stdin and expected output; and all cases' together, since the request travels
# in one broker message.
MAX_CASE_TEXT_BYTES = 1_000_000
MAX_CASES_TEXT_BYTES = 8_000_000
# What a case returns from its output folder, and the whole submission.
MAX_FILES_PER_CASE = 16
MAX_FILE_BYTES_PER_CASE = 1_000_000
MAX_FILES_PER_SUBMISSION = 64
# Each case's stdout and stderr as kept inline in the result: enough to see a wrong answer.
CASE_INLINE_BYTES = 4096
# The bytecode of a 1 MB source stays well under this (measured: ~0.5 MB).
COMPILE_OUTPUT_BYTES = SYSTEM_MAXIMUM["output_bytes"]

# `lines` (default): CRLF and CR count as LF, trailing spaces and tabs of each line and trailing
# empty lines are ignored. `exact`: the bytes must be equal.
COMPARE_RULES = ("lines", "exact")
OUTPUT_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}){0,3}$")

# Run in the sandbox with the user's source on stdin: writes the bytecode (a .pyc the same
# interpreter runs) to stdout, or the SyntaxError to stderr and exits 1.
COMPILE_PROGRAM = """
import sys
from importlib._bootstrap_external import _code_to_timestamp_pyc
source = sys.stdin.buffer.read()
try:
    code = compile(source, "/code/main.py", "exec", dont_inherit=True)
except (SyntaxError, ValueError) as error:
    import traceback
    # The parser quotes the line from the file /code/main.py, which here is this program.
    lines = source.decode(errors="replace").splitlines()
    if isinstance(error, SyntaxError) and error.lineno and 0 < error.lineno <= len(lines):
        error.text = lines[error.lineno - 1] + "\\n"
    sys.stderr.write("".join(traceback.format_exception_only(type(error), error)))
    sys.exit(1)
sys.stdout.buffer.write(bytes(_code_to_timestamp_pyc(code, 0, len(source))))
"""


@dataclass(frozen=True)
class JudgeCase:
    expected_output: str
    stdin: str = ""
    # Per-case limits (each at most the submission's); None: the submission's limits.
    limits: SandboxLimits | None = None


@dataclass(frozen=True)
class JudgeRequest:
    source: str
    test_cases: tuple[JudgeCase, ...]
    files: dict[str, str] = field(default_factory=dict)
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    compare: str = "lines"
    # A folder under /work whose files each case returns; None: no files.
    output_dir: str | None = None

    def __post_init__(self):
        if not self.test_cases:
            raise SandboxRequestError("test_cases", "at least one test case")
        if len(self.test_cases) > MAX_TEST_CASES:
            raise SandboxRequestError("test_cases", f"at most {MAX_TEST_CASES} test cases")
        if self.compare not in COMPARE_RULES:
            raise SandboxRequestError("compare", f"one of {', '.join(COMPARE_RULES)}")
        if self.output_dir is not None and (not OUTPUT_FOLDER.fullmatch(self.output_dir) or ".." in self.output_dir):
            raise SandboxRequestError("output_dir", "a relative folder of plain names, e.g. 'out' or 'out/run'")
        total = 0
        for index, case in enumerate(self.test_cases):
            for name in ("stdin", "expected_output"):
                size = len(getattr(case, name).encode())
                if size > MAX_CASE_TEXT_BYTES:
                    raise SandboxRequestError(f"test_cases[{index}].{name}", f"at most {MAX_CASE_TEXT_BYTES} bytes")
                total += size
            if case.limits is not None:
                for limit in dataclasses.fields(SandboxLimits):
                    if getattr(case.limits, limit.name) > getattr(self.limits, limit.name):
                        raise SandboxRequestError(
                            f"test_cases[{index}].limits.{limit.name}",
                            f"at most the submission's {limit.name} ({getattr(self.limits, limit.name)})",
                        )
                # The source and files must fit the case's own, possibly smaller, /work and file size
                # too: found here, not as an error on the sandbox host when the case's turn comes.
                try:
                    SandboxRequest(source=self.source, files=self.files, limits=case.limits)
                except SandboxRequestError as error:
                    raise SandboxRequestError(f"test_cases[{index}].limits", str(error)) from None
        if total > MAX_CASES_TEXT_BYTES:
            raise SandboxRequestError(
                "test_cases", f"stdin and expected output together at most {MAX_CASES_TEXT_BYTES}"
            )
        if judge_wall_seconds(self) > SYSTEM_MAXIMUM["wall_seconds"]:
            raise SandboxRequestError(
                "test_cases",
                f"cases and compile step may take more than {SYSTEM_MAXIMUM['wall_seconds']} s: "
                "lower limits.wall_seconds (default 30) or a case's own",
            )
        # The source and files must fit the sandbox as in a single run.
        SandboxRequest(source=self.source, files=self.files, limits=self.limits)


def judge_wall_seconds(request: JudgeRequest) -> float:
    """The longest a submission can run: the compile step and every case at its wall limit."""
    return request.limits.wall_seconds + sum(
        (case.limits or request.limits).wall_seconds for case in request.test_cases
    )


def outputs_match(actual: bytes, expected: bytes, rule: str = "lines") -> bool:
    """Whether a case's stdout is its expected output under `rule` (see COMPARE_RULES)."""
    if rule == "exact":
        return actual == expected
    return _normalised_lines(actual) == _normalised_lines(expected)


def _normalised_lines(data: bytes) -> list[bytes]:
    lines = [line.rstrip(b" \t") for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@dataclass
class CaseResult:
    index: int
    verdict: str
    run: SandboxResult

    def to_message(self) -> dict:
        run = self.run
        message = {
            "index": self.index,
            "verdict": self.verdict,
            "message": run.message if self.verdict != "wrong_answer" else "output differs from the expected output",
            "exit_code": run.exit_code,
            "signal": run.signal,
            "timeout_kind": run.timeout_kind,
            "cpu_seconds": run.cpu_seconds,
            "wall_seconds": run.wall_seconds,
            "peak_memory_mb": run.peak_memory_mb,
            "tree_peak_memory_mb": run.tree_peak_memory_mb,
        }
        for stream in ("stdout", "stderr"):
            raw = getattr(run, f"{stream}_raw")
            message[stream] = display_text(raw[:CASE_INLINE_BYTES])
            message[f"{stream}_bytes"] = len(raw)
            message[f"{stream}_inline_truncated"] = len(raw) > CASE_INLINE_BYTES
        message["files"] = [
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for path, data in run.files
        ]
        message["files_truncated"] = run.files_truncated
        return message


@dataclass
class JudgeResult:
    verdict: str
    cases: list[CaseResult] = field(default_factory=list)
    message: str = ""
    compile_stderr: str = ""
    compile_wall_seconds: float = 0.0
    infrastructure_error: bool = False
    total: int = 0

    def to_message(self) -> dict:
        """Plain JSON for the control message and the job row: per-case heads, no file contents."""
        cases = [case.to_message() for case in self.cases]
        return {
            "mode": "judge",
            "verdict": self.verdict,
            "message": self.message,
            "passed": sum(case.verdict == "accepted" for case in self.cases),
            "total": self.total,
            "infrastructure_error": self.infrastructure_error,
            "compile": {"wall_seconds": self.compile_wall_seconds, "stderr": self.compile_stderr},
            "cpu_seconds": round(sum(case.run.cpu_seconds for case in self.cases), 3),
            "wall_seconds": round(self.compile_wall_seconds + sum(case.run.wall_seconds for case in self.cases), 3),
            "peak_memory_mb": max((case.run.peak_memory_mb for case in self.cases), default=0.0),
            "tree_peak_memory_mb": max((case.run.tree_peak_memory_mb for case in self.cases), default=0.0),
            "cases": cases,
        }


def _case_verdict(run: SandboxResult, case: JudgeCase, rule: str) -> str:
    if run.verdict != "ok":
        return run.verdict
    return "accepted" if outputs_match(run.stdout_raw, case.expected_output.encode(), rule) else "wrong_answer"


def compile_program(request: JudgeRequest, slot: int | None = None) -> tuple[bytes | None, SandboxResult]:
    """The program's bytecode, compiled in a sandbox under the submission's limits; None when it fails."""
    limits = dataclasses.replace(request.limits, output_bytes=COMPILE_OUTPUT_BYTES)
    result = run_sandbox(SandboxRequest(source=COMPILE_PROGRAM, stdin=request.source, limits=limits), slot=slot)
    return (result.stdout_raw if result.verdict == "ok" else None), result


def run_judge(
    request: JudgeRequest, slot: int | None = None, *, cancelled: Callable[[], bool] = lambda: False
) -> JudgeResult:
    """Compile once, run every case in a fresh sandbox, judge each; the first case not accepted names the verdict.

    `cancelled` is asked before each case: a cancelled submission runs no further case.
    """
    total = len(request.test_cases)
    bytecode, compiled = compile_program(request, slot)
    if compiled.infrastructure_error:
        return JudgeResult(verdict="internal_error", message=compiled.message, infrastructure_error=True, total=total)
    if bytecode is None:
        reason = compiled.stderr[-CASE_INLINE_BYTES:] if compiled.verdict == "runtime_error" else compiled.message
        return JudgeResult(
            verdict="compile_error",
            message=f"the program does not compile: {reason.strip() or compiled.verdict}",
            compile_stderr=compiled.stderr[-CASE_INLINE_BYTES:],
            compile_wall_seconds=compiled.wall_seconds,
            total=total,
        )
    folder = None
    if request.output_dir is not None:
        folder = OutputFolder(request.output_dir, MAX_FILES_PER_CASE, MAX_FILE_BYTES_PER_CASE)
    program = PreparedProgram(bytecode=bytecode, output_folder=folder)
    result = JudgeResult(verdict="accepted", compile_wall_seconds=compiled.wall_seconds, total=total)
    try:
        with held_slots(slot, SANDBOXES_AHEAD) as case_slots:
            failure = _run_cases(request, program, case_slots, result, cancelled)
    except (NoFreeSlot, OSError) as error:
        logger.exception("sandbox.judge_slots_unavailable", extra={"slot": slot})
        failure = f"no sandbox slot: {error}"
    if failure is not None:
        # Never a case's verdict: the whole submission runs again, on whichever host takes it.
        return JudgeResult(verdict="internal_error", message=failure, infrastructure_error=True, total=total)
    if result.verdict == "killed":
        return result
    failed = next((case for case in result.cases if case.verdict != "accepted"), None)
    if failed is not None:
        result.verdict = failed.verdict
        result.message = f"test case {failed.index}: {failed.verdict}" + (
            f" ({failed.run.message})" if failed.run.message and failed.verdict != "wrong_answer" else ""
        )
    return result


def _case_request(request: JudgeRequest, case: JudgeCase) -> SandboxRequest:
    return SandboxRequest(
        source=request.source, files=request.files, stdin=case.stdin, limits=case.limits or request.limits
    )


def _run_cases(
    request: JudgeRequest,
    program: PreparedProgram,
    case_slots: list[int],
    result: JudgeResult,
    cancelled: Callable[[], bool],
) -> str | None:
    """Run every case into `result`, case i in slot case_slots[i % len]; the infrastructure error, if any.

    With more than one slot, the next cases' sandboxes are started ahead (runner.prepare_sandbox)
    while a case runs, one per spare slot; each case still gets a fresh sandbox, uid and cgroup of
    its own. A sandbox started ahead that does not run (cancelled, failed) is discarded.
    """
    cases, ahead = request.test_cases, len(case_slots)
    pending: collections.deque = collections.deque()

    def start_ahead(index: int) -> None:
        slot = case_slots[index % ahead]
        pending.append(prepare_sandbox(_case_request(request, cases[index]), slot, program))

    files_left = MAX_FILES_PER_SUBMISSION
    try:
        if ahead > 1:
            for index in range(min(ahead, len(cases))):
                start_ahead(index)
        for index, case in enumerate(cases):
            # Asked while this case's sandbox is still pending: a cancel or an error discards it too.
            if cancelled():
                result.verdict, result.message = "killed", f"cancelled before test case {index}"
                return None
            prepared = _started(pending.popleft()) if ahead > 1 else None
            run = prepared.run() if prepared is not None else None
            if run is None or run.infrastructure_error:
                # Not started ahead, or its start or set-up failed: the ordinary way, which retries
                # a set-up failure and reports one that persists.
                run = run_sandbox(_case_request(request, case), slot=case_slots[index % ahead], program=program)
            if run.infrastructure_error:
                return run.message
            if ahead > 1 and index + ahead < len(cases):
                start_ahead(index + ahead)
            if len(run.files) > files_left:
                run.files, run.files_truncated = run.files[:files_left], True
            files_left -= len(run.files)
            result.cases.append(CaseResult(index=index, verdict=_case_verdict(run, case, request.compare), run=run))
    finally:
        while pending:
            # Each one, whatever another's end raised: a sandbox left waiting would hold its uid.
            try:
                _discard(pending.popleft())
            except Exception:
                logger.exception("sandbox.discard_failed")
    return None


def _started(future: "concurrent.futures.Future[PreparedSandbox | SandboxResult]") -> PreparedSandbox | None:
    """The sandbox started ahead, or None where its start failed (the case then runs the ordinary way)."""
    try:
        prepared = future.result()
    except OSError:
        # As run_sandbox treats it: an infrastructure failure (descriptors, a slot's files), not the program's.
        logger.exception("sandbox.prepare_failed")
        return None
    return prepared if isinstance(prepared, PreparedSandbox) else None


def _discard(future: "concurrent.futures.Future[PreparedSandbox | SandboxResult]") -> None:
    prepared = _started(future)
    if prepared is not None:
        prepared.discard()
