"""What commands that submit jobs share: JSON arguments, waiting with a progress bar, the exit code."""

import json
import sys
import time
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from apps.accounts.cli import USAGE_ERROR
from apps.jobs.models import Job, JobStatus

# `--wait` exits with the job's outcome; 2 is a usage error, 4 a --timeout.
EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 3}
TIMEOUT_EXIT = 4


def load_json_argument(raw: str, option: str):
    """A JSON option value, or @path to a file holding it; a clear usage error otherwise."""
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.is_file():
            raise CommandError(f"{option}: no such file {path}", returncode=USAGE_ERROR)
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option}: not valid JSON ({exc})", returncode=USAGE_ERROR) from exc


def wait_for_job(job: Job, timeout: float | None) -> Job:
    """Poll the job with a progress bar on stderr until it ends (or --timeout)."""
    deadline = time.monotonic() + timeout if timeout else None
    with tqdm(
        total=100,
        unit="%",
        desc=f"{job.kind} {job.short_id}",
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
    ) as bar:
        while True:
            job.refresh_from_db()
            bar.n = round(job.progress * 100)
            bar.set_postfix_str(f"{job.status} {job.progress_message}".strip())
            if job.is_terminal:
                return job
            if deadline and time.monotonic() > deadline:
                raise CommandError(
                    f"--timeout: job {job.id} still {job.status} after {timeout}s", returncode=TIMEOUT_EXIT
                )
            time.sleep(0.25)


def print_outcome(command, job: Job, *, result: bool = True) -> None:
    command.stdout.write(f"{job.status} after {job.attempt} attempt(s)")
    if result and job.result is not None:
        command.stdout.write(json.dumps(job.result, indent=2))
    if job.error:
        command.stderr.write(f"error {job.error.get('code')}: {job.error.get('message')}")
