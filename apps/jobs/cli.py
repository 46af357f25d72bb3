"""What commands that submit jobs share: JSON arguments, waiting with a progress bar, the exit code, downloads."""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from apps.accounts.cli import USAGE_ERROR
from apps.jobs import selectors
from apps.jobs.models import Artifact, Job, JobStatus

# `--wait` and `jobs wait` exit with the job's outcome; 2 is a usage error, 4 a --timeout
# (the job goes on: waiting again picks it up).
EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 3}
TIMEOUT_EXIT = 4
EXIT_CODES_HELP = "exit code: 0 succeeded, 1 failed, 3 cancelled, 4 --timeout passed first, 2 usage error"


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


def percent(progress: float) -> str:
    """A job's progress (0..1) as people read it."""
    return f"{round(progress * 100)}%"


def print_outcome(command, job: Job, *, result: bool = True) -> None:
    command.stdout.write(f"{job.status} after {job.attempt} attempt(s)")
    if result and job.result is not None:
        command.stdout.write(json.dumps(job.result, indent=2))
    if job.error:
        command.stderr.write(f"error {job.error.get('code')}: {job.error.get('message')}")


def download_artifacts(command, job: Job, directory: Path, *, roles: tuple[str, ...]) -> list[Path]:
    """Copy the job's artifacts of `roles` (and its result as result.json) into `directory`.

    The caller found `job` through the membership's selectors (as the REST artifact endpoints
    do), so only its organization's files are reachable. Each file streams in 1 MiB chunks to
    a temporary name and is renamed when complete: an interrupted download leaves no
    half-written file under the artifact's name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for artifact in selectors.job_artifacts(job=job).filter(role__in=roles):
        # The stored name is ours, but a name is never a path: no writing outside DIR.
        target = directory / Path(artifact.name).name
        _stream_to(artifact, target)
        command.stdout.write(f"wrote {target} ({artifact.size_bytes} bytes, sha256 {artifact.sha256[:12]})")
        written.append(target)
    if job.result is not None:
        target = directory / "result.json"
        target.write_text(json.dumps(job.result, indent=2) + "\n")
        command.stdout.write(f"wrote {target} (the job's result)")
        written.append(target)
    return written


def _stream_to(artifact: Artifact, target: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
        try:
            with artifact.file.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        except BaseException:
            Path(out.name).unlink(missing_ok=True)
            raise
    Path(out.name).replace(target)
