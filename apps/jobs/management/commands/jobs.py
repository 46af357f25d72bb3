"""`manage.py jobs submit|list|show|wait|download|cancel|retry`: the job contract from the command line."""

import json
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

from django.core.management.base import CommandError
from django.utils import timezone

from apps.accounts.cli import USAGE_ERROR, MemberCommand, add_actor_arguments
from apps.jobs import selectors, services
from apps.jobs.api.serializers import JobDetailOutputSerializer, JobEventOutputSerializer, bulk_submit_requests
from apps.jobs.cli import (
    EXIT_CODES,
    EXIT_CODES_HELP,
    download_artifacts,
    load_json_argument,
    percent,
    print_outcome,
    wait_for_job,
)
from apps.jobs.kinds import all_kinds
from apps.jobs.models import ArtifactRole, FailureOrigin, Job, JobStatus

ARTIFACT_ROLES = {"output": (ArtifactRole.OUTPUT,), "input": (ArtifactRole.INPUT,), "all": tuple(ArtifactRole.values)}


class Command(MemberCommand):
    help = (
        "Submit, list, show, wait for, download, cancel and retry jobs as a user. With `submit --wait` and "
        "`wait` the exit code is the job's outcome: 0 succeeded, 1 failed, 3 cancelled, 4 --timeout passed "
        "first; 2 means the command itself was used wrongly (bad params, unknown job, no permission). "
        "Logs go to stderr, warnings only unless -v 2."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        submit = sub.add_parser("submit", help="submit a job, or many with --from-file")
        submit.add_argument(
            "kind", nargs="?", help=f"job kind: {', '.join(sorted(all_kinds())) or 'see /api/v1/jobs/kinds/'}"
        )
        submit.add_argument(
            "--from-file",
            metavar="PATH",
            help="submit many jobs at once, all or none: a JSON array, or one JSON object per line, each like "
            'the REST body ({"kind": ..., "params": {...}, "priority": ...}); at most JOBS_BULK_MAX (1000)',
        )
        submit.add_argument("--params", default="{}", help="parameters as JSON, or @path/to/file.json")
        submit.add_argument(
            "--inputs-file",
            metavar="PATH",
            help="a .npy/.npz to upload as an input artifact; its id goes into params.inputs_artifact "
            "(inference: large batches, arrays keyed by input name)",
        )
        submit.add_argument("--priority", type=int, default=5, help="0 (least urgent) to 9 (most urgent); default 5")
        submit.add_argument("--max-attempts", type=int, help="attempts before the job fails (default: the kind's)")
        submit.add_argument("--idempotency-key", help="repeat a submit safely: the same key returns the same job")
        submit.add_argument("--delay", type=float, metavar="SECONDS", help="do not start before SECONDS from now")
        submit.add_argument(
            "--concurrency-key", help="jobs with the same key run at most --concurrency-limit at a time (default 1)"
        )
        submit.add_argument("--concurrency-limit", type=int, help="with --concurrency-key: how many at a time")
        submit.add_argument("--wait", action="store_true", help="wait with a progress bar; exit with its outcome")
        submit.add_argument("--timeout", type=float, default=None, help="with --wait: give up after N seconds")
        submit.add_argument(
            "--download", metavar="DIR", help="with --wait: copy the job's output artifacts into DIR once it succeeds"
        )

        listing = sub.add_parser("list", help="list recent jobs of the organization")
        listing.add_argument("--status", choices=JobStatus.values, help="only jobs in this status")
        listing.add_argument("--kind", help="only jobs of this kind")
        listing.add_argument(
            "--failure",
            choices=FailureOrigin.values,
            help="only failed jobs whose failure was the system's (dead letters) or the job's own (user)",
        )
        listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")

        show = sub.add_parser("show", help="show one job with its events")
        show.add_argument("job_id", help="job id (a unique prefix is enough)")
        show.add_argument("--json", action="store_true", help="print JSON")

        wait = sub.add_parser(
            "wait",
            help="wait for a job with a progress bar on stderr; exit with its outcome",
            description="Follow a job already submitted (by anyone in the organization) until it ends, with a "
            f"progress bar on stderr fed by the job's progress, then print its outcome. {EXIT_CODES_HELP}.",
        )
        wait.add_argument("job_id", help="job id (a unique prefix of at least 4 characters is enough)")
        wait.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (exit 4; the job goes on)"
        )
        wait.add_argument("--no-result", action="store_true", help="do not print the job's result JSON")

        download = sub.add_parser(
            "download",
            help="copy a job's artifacts (charts, results, outputs, sandbox output) into a folder",
            description="Copy the files a job produced (simulation charts and results.npz, inference "
            "outputs.npz, sandbox stdout/stderr, ...) and its result as result.json into DIR. The same "
            "organization check as GET /api/v1/jobs/<id>/artifacts: another organization's job is 'no such job'.",
        )
        download.add_argument("job_id", help="job id (a unique prefix of at least 4 characters is enough)")
        download.add_argument(
            "--to",
            metavar="DIR",
            type=Path,
            help="folder to write into (created if missing; default ./job-<id prefix>)",
        )
        download.add_argument(
            "--role",
            choices=sorted(ARTIFACT_ROLES),
            default="output",
            help="which artifacts: output (default: what the job produced), input (what it read) or all",
        )

        cancel = sub.add_parser("cancel", help="cancel a job")
        cancel.add_argument("job_id", help="job id (a unique prefix is enough)")
        retry = sub.add_parser(
            "retry",
            help="retry a failed or cancelled job, or every dead letter with --dead-letters",
            description="Retry one failed or cancelled job, or (--dead-letters) every job of the organization whose "
            "failure was the system's (attempts exhausted, a crash), newest first, up to --limit.",
        )
        retry.add_argument("job_id", nargs="?", help="job id (a unique prefix is enough)")
        retry.add_argument("--dead-letters", action="store_true", help="retry every job the system failed")
        retry.add_argument("--kind", help="with --dead-letters: only this kind")
        retry.add_argument("--limit", type=int, default=100, help="with --dead-letters: at most this many (100)")

        for action in sub.choices.values():
            add_actor_arguments(action)

    # -- actions --

    def _submit(self, membership, options):
        if options["from_file"]:
            return self._submit_many(membership, options)
        if not options["kind"]:
            raise CommandError("give a job kind, or --from-file PATH", returncode=USAGE_ERROR)
        params = load_json_argument(options["params"], "--params")
        if options["inputs_file"]:
            if not isinstance(params, dict):
                raise CommandError("--params: must be a JSON object", returncode=USAGE_ERROR)
            path = Path(options["inputs_file"])
            artifact, created = services.artifact_upload(membership=membership, source=path, name=path.name)
            self.stdout.write(
                f"{'uploaded' if created else 'already uploaded'} {path.name} as artifact {artifact.id} "
                f"({artifact.size_bytes} bytes, sha256 {artifact.sha256[:12]})"
            )
            params["inputs_artifact"] = str(artifact.id)
        job, created = services.job_submit(
            membership=membership,
            kind=options["kind"],
            params=params,
            priority=options["priority"],
            max_attempts=options["max_attempts"],
            idempotency_key=options["idempotency_key"],
            run_after=timezone.now() + timedelta(seconds=options["delay"]) if options["delay"] else None,
            concurrency_key=options["concurrency_key"],
            concurrency_limit=options["concurrency_limit"],
        )
        self.stdout.write(f"{'submitted' if created else 'existing'} {job.id} ({job.kind} on {job.queue})")
        if options["wait"]:
            job = wait_for_job(job, options["timeout"])
            print_outcome(self, job)
            if options["download"] and job.status == JobStatus.SUCCEEDED:
                download_artifacts(self, job, Path(options["download"]), roles=ARTIFACT_ROLES["output"])
            sys.exit(EXIT_CODES.get(job.status, 1))

    def _submit_many(self, membership, options):
        path = Path(options["from_file"])
        try:
            text = path.read_text()
        except OSError as exc:
            raise CommandError(f"--from-file: {exc.strerror}: {path}", returncode=USAGE_ERROR) from exc
        stripped = text.lstrip()
        try:
            if stripped.startswith("["):
                items = json.loads(text)
            else:
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CommandError(f"--from-file: not JSON (line {exc.lineno}: {exc.msg})", returncode=USAGE_ERROR) from exc
        if not isinstance(items, list):
            raise CommandError("--from-file: give a JSON array or JSON lines of jobs", returncode=USAGE_ERROR)
        requests, problems = bulk_submit_requests(items)
        jobs = services.jobs_submit_bulk(membership=membership, requests=requests, problems=problems)
        per_queue = Counter(job.queue for job in jobs)
        self.stdout.write(
            f"submitted {len(jobs)} jobs ({', '.join(f'{n} on {queue}' for queue, n in sorted(per_queue.items()))})"
        )
        for job in jobs:
            self.stdout.write(f"{job.id} {job.kind}")

    def _wait(self, membership, options):
        job = wait_for_job(_find(membership, options["job_id"]), options["timeout"])
        print_outcome(self, job, result=not options["no_result"])
        sys.exit(EXIT_CODES.get(job.status, 1))

    def _download(self, membership, options):
        job = _find(membership, options["job_id"])
        directory = options["to"] or Path(f"job-{job.short_id}")
        written = download_artifacts(self, job, directory, roles=ARTIFACT_ROLES[options["role"]])
        if not written:
            self.stderr.write(f"job {job.id} ({job.status}) has no {options['role']} artifacts and no result yet")

    def _list(self, membership, options):
        jobs = selectors.job_list(membership=membership)
        if options["status"]:
            jobs = jobs.filter(status=options["status"])
        if options["kind"]:
            jobs = jobs.filter(kind=options["kind"])
        if options["failure"]:
            jobs = jobs.filter(status=JobStatus.FAILED, failure=options["failure"])
        self.stdout.write(f"{'ID':36}  {'KIND':10} {'STATUS':10} {'QUEUE':7} {'PRI':>3} {'PROG':>5}  CREATED")
        for job in jobs[: options["limit"]]:
            self.stdout.write(
                f"{job.id}  {job.kind:10} {job.status:10} {job.queue:7} {job.priority:>3} "
                f"{round(job.progress * 100):>4}%  {job.created_at:%Y-%m-%d %H:%M:%S}"
            )

    def _show(self, membership, options):
        job = _find(membership, options["job_id"])
        data = JobDetailOutputSerializer(job).data
        data["events"] = JobEventOutputSerializer(selectors.job_events(job=job), many=True).data
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        for key in (
            "id",
            "kind",
            "status",
            "queue",
            "priority",
            "progress",
            "attempt",
            "max_attempts",
            "owner",
            "worker_host",
            "created_at",
            "started_at",
            "finished_at",
            "duration_s",
        ):
            value = percent(data[key]) if key == "progress" else data[key]
            self.stdout.write(f"{key:>13}: {value}")
        self.stdout.write(f"{'params':>13}: {json.dumps(data['params'])}")
        if data["result"] is not None:
            self.stdout.write(f"{'result':>13}: {json.dumps(data['result'])}")
        if data["error"]:
            self.stdout.write(f"{'error':>13}: {data['error']['code']}: {data['error']['message']}")
        if data["wait_reason"]:
            self.stdout.write(f"{'waiting':>13}: {data['wait_reason']['message']}")
        self.stdout.write("events:")
        for event in data["events"]:
            self.stdout.write(
                f"  {event['created_at']}  {event['from_status'] or '-':>10} -> {event['to_status']:10}"
                f" #{event['attempt']} {event['worker']} {event['message']}"
            )

    def _cancel(self, membership, options):
        job = services.job_cancel(job=_find(membership, options["job_id"]), actor=membership)
        self.stdout.write(f"{job.id} {job.status}")

    def _retry(self, membership, options):
        if options["dead_letters"]:
            dead = selectors.job_list(membership=membership).filter(
                status=JobStatus.FAILED, failure=FailureOrigin.SYSTEM
            )
            if options["kind"]:
                dead = dead.filter(kind=options["kind"])
            retried = services.jobs_retry_many(jobs=list(dead[: max(options["limit"], 0)]), actor=membership)
            self.stdout.write(f"retried {len(retried)} dead-letter job(s)")
            for job in retried:
                self.stdout.write(f"{job.id} {job.kind} {job.status}")
            return
        if not options["job_id"]:
            raise CommandError("give a job id, or --dead-letters", returncode=USAGE_ERROR)
        job = services.job_retry(job=_find(membership, options["job_id"]), actor=membership)
        self.stdout.write(f"{job.id} {job.status}")


def _find(membership, job_id: str) -> Job:
    matches = (
        list(selectors.job_list(membership=membership).filter(id__startswith=job_id.lower())[:2])
        if len(job_id) >= 4
        else []
    )
    if len(matches) != 1:
        reason = "no such job" if not matches else "ambiguous prefix"
        raise CommandError(f"job_id: {reason} '{job_id}'", returncode=USAGE_ERROR)
    return matches[0]
