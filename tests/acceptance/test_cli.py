"""The manage.py commands as a user runs them: real processes, real database, real worker."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from apps.accounts.models import AuditEvent, Membership, Organization, Role, User
from apps.core.worker_process import current_database_url
from apps.jobs.models import Job
from tests.factories import MembershipFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def manage(*args, timeout=60, input=None, env=None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": current_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "JOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def operator():
    return MembershipFactory(role=Role.OPERATOR, user__username="ops")


def test_submit_wait_shows_progress_and_exits_with_the_outcome(start_worker, operator):
    start_worker("cpu")
    result = manage("jobs", "submit", "sleep", "--params", '{"duration_s": 1, "steps": 4}', "--wait", "--as", "ops")
    assert result.returncode == 0, result.stderr
    assert "submitted" in result.stdout and "succeeded after 1 attempt(s)" in result.stdout
    assert "100%" in result.stderr  # the tqdm bar
    job = Job.objects.get()
    assert job.status == "succeeded" and job.owner == operator.user


def test_failed_job_exits_1(start_worker, operator):
    start_worker("cpu", env={"JOBS_RETRY_BACKOFF_SECONDS": "0.1"})
    result = manage(
        "jobs",
        "submit",
        "sleep",
        "--params",
        '{"fail_first_attempts": 3}',
        "--max-attempts",
        "1",
        "--wait",
        "--as",
        "ops",
    )
    assert result.returncode == 1
    assert "error attempts_exhausted" in result.stderr


def test_invalid_params_exit_2_naming_the_field_and_submit_nothing(operator):
    result = manage("jobs", "submit", "sleep", "--params", '{"duration_s": -3}', "--as", "ops")
    assert result.returncode == 2
    assert "params.duration_s" in result.stderr and "Traceback" not in result.stderr
    bad_json = manage("jobs", "submit", "sleep", "--params", "{nope", "--as", "ops")
    assert bad_json.returncode == 2 and "--params: not valid JSON" in bad_json.stderr
    assert Job.objects.count() == 0


def test_unknown_user_is_a_usage_error(operator):
    result = manage("jobs", "list", "--as", "nobody")
    assert result.returncode == 2
    assert "no active user 'nobody'" in result.stderr


def test_list_show_cancel_retry(operator):
    submitted = manage("jobs", "submit", "sleep", "--params", "{}", "--as", "ops")
    job_id = submitted.stdout.split()[1]
    assert job_id in manage("jobs", "list", "--as", "ops").stdout
    cancelled = manage("jobs", "cancel", job_id[:8], "--as", "ops")
    assert cancelled.returncode == 0 and cancelled.stdout.strip().endswith("cancelled")
    shown = json.loads(manage("jobs", "show", job_id, "--json", "--as", "ops").stdout)
    assert shown["status"] == "cancelled"
    assert [e["to_status"] for e in shown["events"]] == ["queued", "cancelled"]
    retried = manage("jobs", "retry", job_id, "--as", "ops")
    assert retried.returncode == 0 and retried.stdout.strip().endswith("queued")


def test_workers_lists_live_hosts_with_their_queues(start_worker):
    worker = start_worker("gpu")
    result = manage("workers", "--alive")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(worker.name))
    assert " yes " in line and "gpu" in line and "CPU" in line


def test_tokens_are_printed_once_and_listed_without_secret(operator):
    created = manage("tokens", "create", "--name", "ci", "--as", "ops")
    token = created.stdout.strip()
    assert token.startswith("sy_") and "cannot be shown again" in created.stderr
    listed = manage("tokens", "list", "--as", "ops").stdout
    prefix = token.split("_")[1]
    assert f"sy_{prefix}_…" in listed and token not in listed
    assert manage("tokens", "revoke", prefix, "--as", "ops").returncode == 0
    assert "revoked" in manage("tokens", "list", "--as", "ops").stdout


def test_scenarios_create_run_and_sweep_from_the_command_line(start_worker, operator, tmp_path):
    from apps.agents.services import agent_create

    for name in ("ada", "bo", "cleo"):
        agent_create(membership=operator, name=name, kind="research", traits={"agreeableness": 0.8})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"rounds": 30, "events": [{"round": 10, "type": "remove_agent", "agent": "cleo"}]}))

    bad = manage("scenarios", "create", "village", "--spec", '{"rounds": 0}', "--as", "ops")
    assert bad.returncode == 2 and "spec.rounds" in bad.stderr
    created = manage("scenarios", "create", "village", "--spec", f"@{spec}", "--as", "ops")
    assert created.returncode == 0, created.stderr
    assert "30 rounds, all_pairs topology, 1 events" in created.stdout

    start_worker("cpu,control")
    run = manage("scenarios", "run", "village", "--seed", "5", "--set", "learning_rate=0.3", "--wait", "--as", "ops")
    assert run.returncode == 0, run.stderr
    assert "seed 5" in run.stdout and "succeeded after 1 attempt(s)" in run.stdout
    assert "final: mean_affinity" in run.stdout and "strongest:" in run.stdout and "Round " in run.stdout
    assert "100%" in run.stderr  # the progress bar
    job = Job.objects.get(kind="simulation")
    assert job.params["overrides"] == {"learning_rate": 0.3} and job.result["events_fired"][0]["round"] == 10

    wrong = manage("scenarios", "run", "village", "--set", "charisma=1", "--as", "ops")
    assert wrong.returncode == 2 and "overrides.charisma" in wrong.stderr

    sweep = manage(
        "scenarios",
        "sweep",
        "village",
        "--grid",
        '{"noise": [0.0, 0.2]}',
        "--replications",
        "2",
        "--wait",
        "--as",
        "ops",
        timeout=120,
    )
    assert sweep.returncode == 0, sweep.stderr
    assert "4/4 runs succeeded" in sweep.stdout and "noise=0.2" in sweep.stdout
    listed = manage("scenarios", "runs", "village", "--as", "ops")
    assert listed.stdout.count("simulation_sweep") == 1 and listed.stdout.count("simulation ") == 1


def test_members_invite_then_the_invitee_accepts_and_is_listed():
    owner = MembershipFactory(role=Role.OWNER, user__username="olga")
    UserFactory(username="ivan")  # in no organization yet
    MembershipFactory(role=Role.OWNER, user__username="mallory")

    invited = manage("members", "invite", "ivan", "developer", "--as", "olga")
    assert invited.returncode == 0, invited.stderr
    invitation_id = invited.stdout.split()[1]
    assert "invited ivan as developer" in invited.stdout
    assert "ivan" in manage("members", "invitations", "--as", "olga").stdout
    received = manage("invitations", "list", "--as", "ivan")
    assert received.returncode == 0 and owner.organization.slug in received.stdout and "pending" in received.stdout

    someone_else = manage("invitations", "accept", invitation_id, "--as", "mallory")
    assert someone_else.returncode == 2 and "No such invitation" in someone_else.stderr
    accepted = manage("invitations", "accept", invitation_id[:8], "--as", "ivan")
    assert accepted.returncode == 0, accepted.stderr
    assert f"joined {owner.organization.slug} as developer" in accepted.stdout

    members = manage("members", "list", "--as", "olga").stdout
    assert any(line.split() == ["ivan", "developer"] for line in members.splitlines()), members
    assert AuditEvent.objects.filter(action="member.added", actor__username="ivan").exists()
    # Adding an existing user directly is gone; `--help` points at the invitation.
    assert manage("members", "add", "ivan", "viewer", "--as", "olga").returncode == 2
    assert "invite" in manage("members", "--help").stdout


def test_members_revoke_invitation_and_invitations_decline():
    MembershipFactory(role=Role.ADMIN, user__username="ada")
    UserFactory(username="bert")
    first = manage("members", "invite", "bert", "viewer", "--as", "ada").stdout.split()[1]
    assert manage("members", "revoke-invitation", first, "--as", "ada").returncode == 0
    refused = manage("invitations", "accept", first, "--as", "bert")
    assert refused.returncode == 2 and "revoked" in refused.stderr
    second = manage("members", "invite", "bert", "viewer", "--as", "ada").stdout.split()[1]
    declined = manage("invitations", "decline", second, "--as", "bert")
    assert declined.returncode == 0, declined.stderr
    assert "declined" in manage("members", "invitations", "--as", "ada").stdout
    owner_invite = manage("members", "invite", "bert", "owner", "--as", "ada")
    assert owner_invite.returncode == 2 and "owner" in owner_invite.stderr


def test_a_superuser_creates_users_and_organizations_from_the_command_line():
    UserFactory(username="root", is_superuser=True, is_staff=True)
    passphrase = "a long enough passphrase 42"

    created = manage(
        "users",
        "create",
        "dora",
        "--email",
        "dora@example.com",
        "--password-stdin",
        "--as",
        "root",
        input=passphrase + "\n",
    )
    assert created.returncode == 0, created.stderr
    assert User.objects.get(username="dora").check_password(passphrase)
    from_env = manage("users", "create", "emil", "--as", "root", env={"SWITCHYARD_NEW_USER_PASSWORD": passphrase})
    assert from_env.returncode == 0, from_env.stderr
    weak = manage("users", "create", "weak", "--password-stdin", "--as", "root", input="123\n")
    assert weak.returncode == 2 and "password" in weak.stderr and not User.objects.filter(username="weak").exists()
    taken = manage("users", "create", "dora", "--password-stdin", "--as", "root", input=passphrase + "\n")
    assert taken.returncode == 2 and "already" in taken.stderr
    assert "dora" in manage("users", "list", "--as", "root").stdout

    org = manage("organizations", "create", "acme", "--name", "Acme Corp", "--owner", "dora", "--as", "root")
    assert org.returncode == 0, org.stderr
    assert Membership.objects.get(organization__slug="acme").user.username == "dora"
    assert "acme" in manage("organizations", "list", "--as", "root").stdout
    assert AuditEvent.objects.filter(action="organization.created", actor__username="root").exists()
    assert AuditEvent.objects.filter(action="user.created", actor__username="root").count() == 2

    # Only an active superuser may: anyone else is a usage error that creates nothing.
    for command in (
        ("users", "create", "eve", "--password-stdin"),
        ("organizations", "create", "evil", "--name", "Evil", "--owner", "dora"),
        ("users", "list"),
    ):
        refused = manage(*command, "--as", "dora", input=passphrase + "\n")
        assert refused.returncode == 2 and "superuser" in refused.stderr, refused.stderr
    assert not User.objects.filter(username="eve").exists() and not Organization.objects.filter(slug="evil").exists()
