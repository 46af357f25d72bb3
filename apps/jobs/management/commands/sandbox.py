"""`manage.py sandbox run FILE`: run a Python file as a sandbox job and print what it did."""

import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, add_actor_arguments, resolve_membership, usage_error
from apps.core.errors import DomainError
from apps.jobs import services

VERDICT_EXIT = {"ok": 0}


class Command(BaseCommand):
    help = (
        "Run a Python file on a sandbox host (no network, read-only system, private tmpfs, limits) and print its "
        "stdout, stderr and verdict. Exit code: 0 for verdict ok, 1 for any other verdict, 2 for bad usage, "
        "3 if the job was cancelled."
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
            self.stderr.write(f"job {job.id} {job.status}: {(job.error or {}).get('message', '')}")
            sys.exit(3 if job.status == "cancelled" else 1)
        result = job.result
        self.stdout.write(result["stdout"], ending="")
        self.stderr.write(result["stderr"], ending="")
        self.stderr.write(
            f"verdict: {result['verdict']}"
            + (f" ({result['timeout_kind']})" if result.get("timeout_kind") else "")
            + (f" exit={result['exit_code']}" if result.get("exit_code") is not None else "")
            + f" cpu={result['cpu_seconds']:.2f}s wall={result['wall_seconds']:.2f}s"
            + f" peak={result['peak_memory_mb']:.0f}MB"
        )
        sys.exit(VERDICT_EXIT.get(result["verdict"], 1))
