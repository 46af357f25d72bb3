"""Organization quotas at submit, member and token rules, and the audit trail."""

from datetime import UTC, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.accounts.models import ApiToken, AuditEvent, Role
from apps.accounts.services import api_token_create, api_token_revoke, organization_quota_set
from apps.core.errors import DomainError, PermissionDenied
from apps.jobs.models import Job, JobStatus
from apps.jobs.services import job_submit
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def submit(client, kind="sleep", **params):
    return client.post("/api/v1/jobs/", {"kind": kind, "params": params}, format="json")


# --- quotas ------------------------------------------------------------------------------


def test_active_jobs_per_kind_quota_refuses_with_the_quota_and_its_use(member):
    owner, client = member("owner")
    organization_quota_set(organization=owner.organization, actor=None, concurrent_jobs={"sleep": 2})
    assert submit(client).status_code == 201
    assert submit(client).status_code == 201

    refused = submit(client)

    assert refused.status_code == 429, refused.content
    body = refused.json()
    assert body["code"] == "quota_exceeded"
    assert "concurrent_jobs.sleep" in body["detail"] and "2 of 2" in body["detail"]
    assert refused["Retry-After"]
    assert Job.objects.filter(organization=owner.organization).count() == 2  # nothing written
    # Finished jobs free their slot; other organizations are not affected.
    Job.objects.filter(organization=owner.organization).update(status=JobStatus.SUCCEEDED)
    assert submit(client).status_code == 201
    _, stranger = member("owner")
    assert submit(stranger).status_code == 201


def test_sandbox_limits_are_capped_by_the_organization_quota(member):
    developer, client = member("developer")
    organization_quota_set(organization=developer.organization, actor=None, sandbox_limits={"memory_mb": 128})

    refused = submit(client, "sandbox", source="print(1)", limits={"memory_mb": 256})

    assert refused.status_code == 400
    assert refused.json()["fields"] == {
        "params.limits.memory_mb": ["At most 128 (organization quota sandbox_limits.memory_mb)."]
    }
    assert submit(client, "sandbox", source="print(1)", limits={"memory_mb": 128}).status_code == 201


def test_gpu_seconds_per_day_counts_todays_gpu_jobs(member):
    developer, client = member("developer")
    organization_quota_set(organization=developer.organization, actor=None, gpu_seconds_per_day=600)
    earlier, _ = job_submit(membership=developer, kind="sleep", params={"queue": "gpu"})
    # 650 s from just after midnight (UTC): today's, whatever the time of day the test runs at.
    midnight = timezone.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    started = midnight + timedelta(seconds=1)
    Job.objects.filter(pk=earlier.pk).update(
        status=JobStatus.SUCCEEDED, started_at=started, finished_at=started + timedelta(seconds=650)
    )

    refused = submit(client, queue="gpu")

    assert refused.status_code == 429
    assert "gpu_seconds_per_day" in refused.json()["detail"] and "650 of 600" in refused.json()["detail"]
    assert submit(client, queue="cpu").status_code == 201  # only the gpu queue is metered
    usage = client.get("/api/v1/quota").json()
    assert usage["gpu_seconds_per_day"] == {"limit": 600, "used": 650.0}
    assert usage["concurrent_jobs"]["sleep"] == {"limit": None, "used": 1}


def test_quota_values_are_validated_with_the_field():
    organization = OrganizationFactory()
    with pytest.raises(Exception) as refused:
        organization_quota_set(
            organization=organization, actor=None, concurrent_jobs={"nope": 1}, sandbox_limits={"memory_mb": 10**9}
        )
    assert set(refused.value.fields) == {"concurrent_jobs.nope", "sandbox_limits.memory_mb"}


def test_quotas_command_sets_and_shows_with_an_audit_event(capsys):
    organization = OrganizationFactory()
    call_command("quotas", "set", organization.slug, "--concurrent", "sandbox=3", "--sandbox-limit", "wall_seconds=5")
    out = capsys.readouterr().out
    assert '"limit": 3' in out
    event = AuditEvent.objects.get(organization=organization, action="quota.changed")
    assert event.details["after"]["sandbox_limits"] == {"wall_seconds": 5}


# --- members and tokens ------------------------------------------------------------------


def test_only_an_owner_makes_owners_and_the_last_owner_stays(member):
    owner, owner_client = member("owner")
    _, admin_client = member("admin", organization=owner.organization)
    colleague = MembershipFactory(organization=owner.organization, role=Role.DEVELOPER)

    refused = admin_client.patch(f"/api/v1/members/{colleague.user.username}", {"role": "owner"}, format="json")
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    demote_self = owner_client.patch(f"/api/v1/members/{owner.user.username}", {"role": "viewer"}, format="json")
    assert demote_self.status_code == 409 and "at least one owner" in demote_self.json()["detail"]
    promoted = owner_client.patch(f"/api/v1/members/{colleague.user.username}", {"role": "owner"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["role"] == "owner"
    bad = owner_client.patch(f"/api/v1/members/{colleague.user.username}", {"role": "root"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()["fields"]


def test_a_removed_members_tokens_stop_working(member):
    owner, owner_client = member("owner")
    leaving, leaving_client = member("developer", organization=owner.organization)
    assert leaving_client.get("/api/v1/jobs/").status_code == 200

    assert owner_client.delete(f"/api/v1/members/{leaving.user.username}").status_code == 204

    assert leaving_client.get("/api/v1/jobs/").status_code == 401


def test_token_created_by_rest_is_shown_once_and_works(member):
    _, client = member("developer")
    created = client.post("/api/v1/tokens/", {"name": "ci", "scopes": ["jobs:read"]}, format="json")
    assert created.status_code == 201
    secret = created.json()["token"]
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert secret not in str(listed) and {t["name"] for t in listed} >= {"ci"}
    reader = client.__class__()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert reader.get("/api/v1/jobs/").status_code == 200
    refused = submit(reader)
    assert refused.status_code == 403 and "jobs:write" in refused.json()["detail"]
    # A token cannot mint a wider one than itself.
    wider = reader.post("/api/v1/tokens/", {"name": "x", "scopes": ["*"]}, format="json")
    assert wider.status_code == 403  # needs tokens:write first
    unknown = client.post("/api/v1/tokens/", {"name": "x", "scopes": ["everything"]}, format="json")
    assert unknown.status_code == 400 and "scopes" in unknown.json()["fields"]


@pytest.mark.parametrize("spoil", ["revoke", "expire"])
def test_revoked_or_expired_tokens_are_refused_on_writes_too(client, spoil):
    membership = MembershipFactory(role=Role.OWNER)
    issued = api_token_create(membership=membership, name="ci")
    if spoil == "revoke":
        api_token_revoke(token=issued.token)
    else:
        type(issued.token).objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.post(
        "/api/v1/jobs/",
        {"kind": "sleep"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {issued.plaintext}",
    )
    assert response.status_code == 401
    assert not Job.objects.exists()


# --- audit trail -------------------------------------------------------------------------


def test_security_relevant_actions_are_in_the_audit_trail(member):
    owner, owner_client = member("owner")
    operator, operator_client = member("operator", organization=owner.organization)
    developer, developer_client = member("developer", organization=owner.organization)
    job = submit(developer_client).json()

    operator_client.post(f"/api/v1/jobs/{job['id']}/cancel")  # someone else's job
    owner_client.patch(f"/api/v1/members/{developer.user.username}", {"role": "analyst"}, format="json")
    token = owner_client.post("/api/v1/tokens/", {"name": "deploy"}, format="json").json()
    owner_client.post(f"/api/v1/tokens/{token['prefix']}/revoke")
    own = submit(owner_client).json()
    owner_client.post(f"/api/v1/jobs/{own['id']}/cancel")  # own job: not audited

    events = owner_client.get("/api/v1/audit/").json()["results"]
    actions = [(e["action"], e["actor"]) for e in events]
    assert ("job.cancelled", operator.user.username) in actions
    assert ("member.role_changed", owner.user.username) in actions
    assert ("token.created", owner.user.username) in actions and ("token.revoked", owner.user.username) in actions
    assert sum(action == "job.cancelled" for action, _ in actions) == 1
    change = next(e for e in events if e["action"] == "member.role_changed")
    assert change["details"] == {"username": developer.user.username, "from": "developer", "to": "analyst"}
    # Roles without audit.read are refused; another organization sees none of it.
    assert operator_client.get("/api/v1/audit/").status_code == 403
    _, stranger = member("owner")
    assert all(e["target_id"] != job["id"] for e in stranger.get("/api/v1/audit/").json()["results"])


def test_audit_command_prints_the_trail(member, capsys):
    owner, _ = member("owner")
    api_token_create(membership=owner, name="cli-token")
    call_command("audit", "--as", owner.user.username)
    assert "token.created" in capsys.readouterr().out


def _token_client(secret):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


def test_a_token_cannot_mint_a_wider_one_by_asking_for_no_scopes(member):
    # Issue 17, finding 4: `scopes: []` skipped the "no wider than yourself" check and was
    # then widened to `*`, so `tokens:write` alone was a way to every scope.
    _, client = member("owner")
    minter = _token_client(
        client.post("/api/v1/tokens/", {"name": "minter", "scopes": ["tokens:write"]}, format="json").json()["token"]
    )

    empty = minter.post("/api/v1/tokens/", {"name": "x", "scopes": []}, format="json")
    assert empty.status_code == 400, empty.content
    assert "scopes" in empty.json()["fields"]
    wider = minter.post("/api/v1/tokens/", {"name": "x", "scopes": ["*"]}, format="json")
    assert wider.status_code == 403 and "scopes" in wider.json()["fields"]
    assert not ApiToken.objects.filter(name="x").exists()
    # Omitted scopes are the creating token's own, never `*`.
    omitted = minter.post("/api/v1/tokens/", {"name": "y"}, format="json")
    assert omitted.status_code == 201 and omitted.json()["scopes"] == ["tokens:write"]
    narrower = minter.post("/api/v1/tokens/", {"name": "z", "scopes": ["tokens:read"]}, format="json")
    assert narrower.status_code == 201 and narrower.json()["scopes"] == ["tokens:read"]


def test_an_empty_scope_list_is_refused_for_sessions_and_the_service_too(client):
    membership = MembershipFactory(role=Role.DEVELOPER)
    client.force_login(membership.user)
    refused = client.post("/api/v1/tokens/", {"name": "x", "scopes": []}, content_type="application/json")
    assert refused.status_code == 400 and "scopes" in refused.json()["fields"]
    with pytest.raises(DomainError) as empty:
        api_token_create(membership=membership, name="x", scopes=[])
    assert "scopes" in empty.value.fields
    with pytest.raises(PermissionDenied) as wider:
        api_token_create(membership=membership, name="x", scopes=["jobs:write"], creator_scopes=["jobs:read"])
    assert "scopes" in wider.value.fields
    # A session or the CLI (no creating token) gets `*` by default, as before.
    assert api_token_create(membership=membership, name="cli").token.scopes == ["*"]
