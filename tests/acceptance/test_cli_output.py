"""What the manage.py commands print and exit with (issue 21): quiet logs, each error once, `jobs wait`,
`jobs download`, labelled similarity scores and progress as a percent. Real processes, database and worker."""

import json

import numpy as np
import pytest

from apps.accounts.models import Role
from apps.jobs.models import Job
from tests.acceptance.test_cli import manage
from tests.factories import MembershipFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def operator():
    return MembershipFactory(role=Role.OPERATOR, user__username="ops")


def _submit(*args) -> str:
    result = manage("jobs", "submit", *args, "--as", "ops")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def test_a_submit_prints_no_log_lines_unless_asked_with_verbosity(operator):
    quiet = manage("jobs", "submit", "sleep", "--params", "{}", "--as", "ops")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("submitted ") and quiet.stdout.count("\n") == 1
    assert quiet.stderr == ""  # was a JSON `job.submitted` INFO line on every submit

    # -v 2 after the action (where people type it) as well as before it: INFO logs, on stderr only.
    for args in (("jobs", "submit", "sleep", "-v", "2"), ("jobs", "-v", "2", "submit", "sleep")):
        verbose = manage(*args, "--params", "{}", "--as", "ops")
        assert verbose.returncode == 0, verbose.stderr
        assert '"message": "job.submitted"' in verbose.stderr
        assert "job.submitted" not in verbose.stdout


def test_a_refused_request_prints_each_reason_once(operator):
    single = manage("jobs", "submit", "sleep", "--params", '{"duration_s": -3}', "--as", "ops")
    assert single.returncode == 2
    assert single.stderr.count("params.duration_s") == 1, single.stderr  # was printed twice
    assert single.stdout == ""

    several = manage("jobs", "submit", "sleep", "--params", '{"duration_s": -3, "steps": 0}', "--as", "ops")
    assert several.returncode == 2
    assert several.stderr.count("params.duration_s") == 1 and several.stderr.count("params.steps") == 1

    priority = manage("jobs", "submit", "sleep", "--priority", "12", "--as", "ops")
    assert priority.returncode == 2 and priority.stderr.count("priority") == 1, priority.stderr


def test_jobs_wait_follows_an_existing_job_and_exits_with_its_outcome(start_worker, operator):
    succeeding = _submit("sleep", "--params", '{"duration_s": 1, "steps": 4}')
    failing = _submit("sleep", "--params", '{"fail_first_attempts": 3}', "--max-attempts", "1")
    start_worker("cpu", env={"JOBS_RETRY_BACKOFF_SECONDS": "0.1"})

    waited = manage("jobs", "wait", succeeding[:8], "--as", "ops")
    assert waited.returncode == 0, waited.stderr
    assert "succeeded after 1 attempt(s)" in waited.stdout
    assert "100%" in waited.stderr  # the tqdm bar, fed by the job's progress

    failed = manage("jobs", "wait", failing, "--as", "ops")
    assert failed.returncode == 1 and "error attempts_exhausted" in failed.stderr


def test_jobs_wait_exits_3_when_cancelled_and_4_when_the_timeout_passes_first(operator):
    # No worker: the job stays queued.
    queued = _submit("sleep", "--params", "{}")
    timed_out = manage("jobs", "wait", queued, "--timeout", "1", "--as", "ops")
    assert timed_out.returncode == 4, timed_out.stderr
    assert "still queued" in timed_out.stderr and timed_out.stderr.count("--timeout") == 1
    assert Job.objects.get(pk=queued).status == "queued"  # giving up waiting leaves the job alone

    assert manage("jobs", "cancel", queued, "--as", "ops").returncode == 0
    cancelled = manage("jobs", "wait", queued, "--as", "ops")
    assert cancelled.returncode == 3 and "cancelled" in cancelled.stdout

    unknown = manage("jobs", "wait", "ffffffff", "--as", "ops")
    assert unknown.returncode == 2 and "no such job" in unknown.stderr


def test_jobs_wait_and_download_explain_themselves_in_help():
    waiting = manage("jobs", "wait", "--help")
    assert waiting.returncode == 0
    assert "0 succeeded, 1 failed, 3 cancelled, 4 --timeout" in " ".join(waiting.stdout.split())
    download = manage("jobs", "download", "--help")
    assert download.returncode == 0 and "--to DIR" in download.stdout and "--role" in download.stdout


def test_jobs_download_writes_a_simulations_chart_results_and_result_for_its_organization_only(
    start_worker, operator, tmp_path
):
    from apps.agents.services import agent_create

    for name in ("ada", "bo"):
        agent_create(membership=operator, name=name, kind="research", traits={"agreeableness": 0.8})
    assert manage("scenarios", "create", "village", "--spec", '{"rounds": 10}', "--as", "ops").returncode == 0
    start_worker("cpu,control")
    run = manage("scenarios", "run", "village", "--seed", "3", "--wait", "--as", "ops")
    assert run.returncode == 0, run.stderr
    job = Job.objects.get(kind="simulation")

    target = tmp_path / "out"
    downloaded = manage("jobs", "download", job.short_id, "--to", str(target), "--as", "ops")
    assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(p.name for p in target.iterdir()) == ["chart.png", "result.json", "results.npz"]
    assert (target / "chart.png").read_bytes().startswith(b"\x89PNG")
    with np.load(target / "results.npz") as arrays:
        assert arrays.files  # the compatibility matrix and per-round metrics
    job.refresh_from_db()
    assert json.loads((target / "result.json").read_text()) == job.result

    # Another organization's member: the job does not exist for them, and nothing is written.
    MembershipFactory(role=Role.OWNER, user__username="mallory")
    elsewhere = tmp_path / "stolen"
    refused = manage("jobs", "download", str(job.id), "--to", str(elsewhere), "--as", "mallory")
    assert refused.returncode == 2 and "no such job" in refused.stderr
    assert not elsewhere.exists()


def test_similar_agents_show_a_labelled_cosine_similarity_not_a_raw_distance(operator):
    from apps.agents.services import agent_create

    dim = 384
    ada = np.zeros(dim)
    ada[0] = 1.0
    bo = np.zeros(dim)
    bo[0], bo[1] = 0.6, 0.8  # cosine similarity to ada 0.6, distance 0.4
    agent_create(membership=operator, name="ada", kind="research", embedding=ada.tolist())
    agent_create(membership=operator, name="bo", kind="research", embedding=bo.tolist())

    similar = manage("agents", "similar", "ada", "--as", "ops")
    assert similar.returncode == 0, similar.stderr
    assert "cosine similarity" in similar.stdout and "higher is closer" in similar.stdout
    row = next(line for line in similar.stdout.splitlines() if line.split()[-2:] == ["bo", "research"])
    assert row.split()[0] == "0.6000", similar.stdout  # was 0.4000, the distance


def test_jobs_show_prints_progress_as_a_percent(operator):
    job_id = _submit("sleep", "--params", "{}")
    Job.objects.filter(pk=job_id).update(progress=0.375)
    shown = manage("jobs", "show", job_id, "--as", "ops")
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.strip().startswith("progress:"))
    assert line.split(":", 1)[1].strip() == "38%", line  # was 0.375
