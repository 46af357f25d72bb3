"""`manage.py sandbox run FILE` and `sandbox judge FILE CASES`: a Python file as a sandbox job."""

import json
import re
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, add_actor_arguments, resolve_membership, usage_error
from apps.core.errors import DomainError
from apps.jobs import services

VERDICT_EXIT = {"ok": 0}
# Every line the command itself writes starts with this; a line of program output that starts
# with it is escaped, so program output can never print a line that looks like the verdict.
MARK = "[sandbox]"
# C0 controls but newline and tab, DEL, C1 controls, and the Unicode bidirectional overrides a
# terminal would act on (Trojan-source reordering).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_for_terminal(text: str) -> str:
    """Program output made inert for a terminal: control characters as \\xNN / \\uNNNN, no line forging MARK."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
    return "\n".join("\\x5b" + line[1:] if line.startswith(MARK) else line for line in text.split("\n"))


def _one_line(text: str) -> str:
    return escape_for_terminal(text).replace("\n", "\\n")


class Command(BaseCommand):
    help = (
        "Run a Python file on a sandbox host (no network, read-only system, private tmpfs, limits) and print its "
        "stdout (to stdout) and stderr (to stderr) with control characters escaped as \\xNN, then the verdict on "
        f"its own line starting with {MARK} on stderr, a line program output cannot produce. Output longer than "
        "the inline cap (64 KB per stream) is shown up to the cap, with a note. `judge` runs it against test "
        "cases and prints a table of per-case verdicts and the submission's verdict. Exit code: 0 for verdict "
        "ok (run) or accepted (judge), 1 for any other verdict, 2 for bad usage, 3 if the job was cancelled."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        run = sub.add_parser("run", help="run FILE in the sandbox and wait for its verdict")
        run.add_argument("file", type=Path, help="the Python program")
        run.add_argument("--stdin", type=Path, help="file whose content is the program's standard input")
        run.add_argument("--cpu-seconds", type=int, help="CPU time limit (default 10)")
        run.add_argument("--wall-seconds", type=float, help="wall-clock limit (default 30)")
        run.add_argument("--memory-mb", type=int, help="memory limit (default 512)")
        add_actor_arguments(run)
        judge = sub.add_parser(
            "judge",
            help="compile FILE once and run it against test cases; print a verdict per case and the submission's",
        )
        judge.add_argument("file", type=Path, help="the Python program")
        judge.add_argument(
            "cases",
            type=Path,
            help="a folder of NAME.in / NAME.out pairs (stdin / expected output; sorted by NAME), or a JSON file: "
            '[{"stdin": ..., "expected_output": ..., "limits": {...}}, ...]',
        )
        judge.add_argument(
            "--compare",
            choices=["lines", "exact"],
            help="lines (default): trailing whitespace and trailing empty lines ignored, CRLF = LF; exact: bytes equal",
        )
        judge.add_argument("--output-dir", help="folder under /work whose files each case returns as artifacts")
        judge.add_argument("--cpu-seconds", type=int, help="CPU time limit per case (default 10)")
        judge.add_argument("--wall-seconds", type=float, help="wall-clock limit per case (default 30)")
        judge.add_argument("--memory-mb", type=int, help="memory limit per case (default 512)")
        add_actor_arguments(judge)

    def handle(self, *args, action: str, **options):
        if action == "judge":
            return self.judge(**options)
        return self.run_one(**options)

    def _submit_and_wait(self, membership, params):
        try:
            job, _ = services.job_submit(membership=membership, kind="sandbox", params=params)
        except DomainError as exc:
            raise usage_error(exc) from exc
        while not job.is_terminal:
            time.sleep(0.2)
            job.refresh_from_db()
        if job.status == "cancelled" or not job.result:
            self.stderr.write(f"{MARK} job {job.id} {job.status}: {_one_line((job.error or {}).get('message', ''))}")
            sys.exit(3 if job.status == "cancelled" else 1)
        return job

    def judge(self, *, file: Path, cases: Path, compare: str | None, output_dir: str | None, **options):
        membership = resolve_membership(options)
        if not file.is_file():
            raise CommandError(f"file: no such file {file}", returncode=USAGE_ERROR)
        params = {"source": file.read_text(), "test_cases": _read_cases(cases)}
        limits = {key: options[key] for key in ("cpu_seconds", "wall_seconds", "memory_mb") if options[key]}
        if limits:
            params["limits"] = limits
        if compare:
            params["compare"] = compare
        if output_dir:
            params["output_dir"] = output_dir
        result = self._submit_and_wait(membership, params).result
        # Every line is ours and starts with MARK; program text (stdout heads, messages, paths) is
        # escaped onto one line, so nothing the program prints can look like a row or the verdict.
        self.stdout.write(f"{MARK} {'case':>4}  {'verdict':<13} {'cpu s':>6} {'wall s':>7} {'peak MB':>7}  note")
        for case in result.get("cases", []):
            note = case.get("message") or ""
            if case.get("files"):
                note = f"{note} files: {', '.join(f['path'] for f in case['files'])}".strip()
            self.stdout.write(
                f"{MARK} {case['index']:>4}  {case['verdict']:<13} {case['cpu_seconds']:>6.2f} "
                f"{case['wall_seconds']:>7.2f} {case['peak_memory_mb']:>7.0f}  {_one_line(note)[:200]}"
            )
        if result.get("verdict") == "compile_error":
            self.stdout.write(f"{MARK} compile: {_one_line(result.get('compile', {}).get('stderr', ''))[:2000]}")
        self.stdout.write(
            f"{MARK} verdict: {result['verdict']} passed={result.get('passed', 0)}/{result.get('total', 0)}"
            + (f" message={_one_line(result['message'])}" if result.get("message") else "")
        )
        sys.exit(0 if result["verdict"] == "accepted" else 1)

    def run_one(self, *, file: Path, stdin: Path | None, **options):
        membership = resolve_membership(options)
        for path, name in ((file, "file"), (stdin, "--stdin")):
            if path is not None and not path.is_file():
                raise CommandError(f"{name}: no such file {path}", returncode=USAGE_ERROR)
        limits = {key: options[key] for key in ("cpu_seconds", "wall_seconds", "memory_mb") if options[key]}
        params = {"source": file.read_text(), "stdin": stdin.read_text() if stdin else "", "limits": limits}
        result = self._submit_and_wait(membership, params).result
        stdout = escape_for_terminal(result.get("stdout", ""))
        stderr = escape_for_terminal(result.get("stderr", ""))
        self.stdout.write(stdout, ending="")
        if stdout and not stdout.endswith("\n") and self.stdout.isatty():
            self.stdout.write("")  # the verdict below starts on a line of its own on a terminal
        self.stdout.flush()
        self.stderr.write(stderr, ending="" if not stderr or stderr.endswith("\n") else "\n")
        for stream in ("stdout", "stderr"):
            if result.get(f"{stream}_inline_truncated"):
                self.stderr.write(
                    f"{MARK} {stream}: showing the first {len(result[stream].encode())} bytes "
                    f"of {result[f'{stream}_bytes']}"
                )
        self.stderr.write(
            f"{MARK} verdict: {result['verdict']}"
            + (f" ({result['timeout_kind']})" if result.get("timeout_kind") else "")
            + (f" exit={result['exit_code']}" if result.get("exit_code") is not None else "")
            + f" cpu={result['cpu_seconds']:.2f}s wall={result['wall_seconds']:.2f}s"
            + f" peak={result['peak_memory_mb']:.0f}MB"
            + (f" message={_one_line(result['message'])}" if result.get("message") else "")
        )
        sys.exit(VERDICT_EXIT.get(result["verdict"], 1))


def _read_cases(path: Path) -> list[dict]:
    """Test cases from a folder of NAME.in / NAME.out pairs or a JSON list; bad input is a usage error."""
    if path.is_dir():
        cases = []
        for expected in sorted(path.glob("*.out")):
            given = expected.with_suffix(".in")
            cases.append(
                {"stdin": given.read_text() if given.is_file() else "", "expected_output": expected.read_text()}
            )
        if not cases:
            raise CommandError(f"cases: no NAME.out files in {path}", returncode=USAGE_ERROR)
        return cases
    if not path.is_file():
        raise CommandError(f"cases: no such file or folder {path}", returncode=USAGE_ERROR)
    try:
        cases = json.loads(path.read_text())
    except ValueError as exc:
        raise CommandError(f"cases: {path} is not JSON: {exc}", returncode=USAGE_ERROR) from exc
    return cases
