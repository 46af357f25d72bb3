"""`manage.py sandbox run FILE`: run a Python file as a sandbox job and print what it did."""

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
        "the inline cap (64 KB per stream) is shown up to the cap, with a note. Exit code: 0 for verdict ok, "
        "1 for any other verdict, 2 for bad usage, 3 if the job was cancelled."
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

    def handle(self, *args, file: Path, stdin: Path | None, **options):
        membership = resolve_membership(options)
        for path, name in ((file, "file"), (stdin, "--stdin")):
            if path is not None and not path.is_file():
                raise CommandError(f"{name}: no such file {path}", returncode=USAGE_ERROR)
        limits = {key: options[key] for key in ("cpu_seconds", "wall_seconds", "memory_mb") if options[key]}
        params = {"source": file.read_text(), "stdin": stdin.read_text() if stdin else "", "limits": limits}
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
        result = job.result
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
