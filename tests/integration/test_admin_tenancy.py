"""The admin keeps every organization to itself (findings 1, 2, 3 and 9 of the tenant-boundary issue).

A staff user who is not a superuser acts in the admin with the roles they hold, organization
by organization; the whole-registry sweep is in test_admin_tenant_sweep.py.
"""

import hashlib

import pytest
from django.contrib.auth.models import Permission

from apps.accounts.models import ApiToken, AuditEvent, Membership, Role
from apps.accounts.services import api_token_create
from apps.jobs import services as jobs
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _grant_every_admin_permission(user) -> None:
    """The strongest staff user short of superuser: every Django model permission."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(*Permission.objects.all())


@pytest.fixture
def org_admin(client):
    """A staff user who is admin (not owner) of organization A, with every model permission."""
    home = OrganizationFactory(slug="home-org")
    MembershipFactory(organization=home, role=Role.OWNER)
    membership = MembershipFactory(organization=home, role=Role.ADMIN, user__username="alice")
    _grant_every_admin_permission(membership.user)
    client.force_login(membership.user)
    return client, membership


@pytest.fixture
def elsewhere():
    """Organization B with its owner and a member who belongs only to B."""
    away = OrganizationFactory(slug="zqx9w7-away")
    owner = MembershipFactory(organization=away, role=Role.OWNER, user__username="zqx9w7-owner")
    return away, owner


def test_finding_1_an_org_admin_cannot_make_themselves_owner_of_another_organization(org_admin, elsewhere):
    client, membership = org_admin
    away, _ = elsewhere
    page = client.get("/admin/accounts/membership/add/")
    assert away.slug not in page.content.decode()

    audit_before = AuditEvent.objects.filter(organization=away).count()
    response = client.post(
        "/admin/accounts/membership/add/",
        {"user": membership.user.pk, "organization": away.pk, "role": Role.OWNER},
    )
    assert response.status_code in (200, 403)  # the form refused, or adding is not theirs to do
    assert not Membership.objects.filter(user=membership.user, organization=away).exists()
    assert AuditEvent.objects.filter(organization=away).count() == audit_before


def test_finding_1_an_org_admin_cannot_grant_a_role_above_their_own(org_admin):
    client, membership = org_admin
    colleague = MembershipFactory(organization=membership.organization, role=Role.DEVELOPER)
    page = client.get(f"/admin/accounts/membership/{colleague.pk}/change/").content.decode()
    assert 'value="owner"' not in page

    for target in (colleague, membership):
        client.post(f"/admin/accounts/membership/{target.pk}/change/", {"role": Role.OWNER})
        target.refresh_from_db()
        assert target.role != Role.OWNER


def test_finding_1_a_role_change_in_the_admin_goes_through_the_service_and_is_audited(org_admin):
    client, membership = org_admin
    colleague = MembershipFactory(organization=membership.organization, role=Role.DEVELOPER)
    response = client.post(f"/admin/accounts/membership/{colleague.pk}/change/", {"role": Role.ANALYST})
    assert response.status_code == 302
    colleague.refresh_from_db()
    assert colleague.role == Role.ANALYST
    event = AuditEvent.objects.get(action="member.role_changed", target_id=str(colleague.pk))
    assert event.actor == membership.user and event.details["to"] == Role.ANALYST


def test_finding_1_removing_a_member_in_the_admin_is_audited(org_admin):
    client, membership = org_admin
    colleague = MembershipFactory(organization=membership.organization, role=Role.VIEWER)
    client.post(f"/admin/accounts/membership/{colleague.pk}/delete/", {"post": "yes"})
    assert not Membership.objects.filter(pk=colleague.pk).exists()
    assert AuditEvent.objects.filter(action="member.removed", target_id=str(colleague.pk)).exists()


def test_finding_2_a_token_cannot_be_moved_to_another_membership_or_widened(org_admin, elsewhere):
    client, membership = org_admin
    _, away_owner = elsewhere
    token = api_token_create(membership=membership, name="narrow", scopes=["jobs:read"]).token
    page = client.get(f"/admin/accounts/apitoken/{token.pk}/change/").content.decode()
    assert away_owner.user.username not in page

    client.post(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {"name": "narrow", "membership": away_owner.pk, "scopes": '["*"]'},
    )
    token.refresh_from_db()
    assert token.membership_id == membership.pk
    assert token.scopes == ["jobs:read"]


def test_finding_2_tokens_are_revoked_not_deleted_and_revoking_is_audited(org_admin):
    client, membership = org_admin
    colleague = MembershipFactory(organization=membership.organization, role=Role.DEVELOPER)
    token = api_token_create(membership=colleague, name="leaked").token
    client.post(f"/admin/accounts/apitoken/{token.pk}/delete/", {"post": "yes"})
    assert ApiToken.objects.filter(pk=token.pk).exists()
    client.post("/admin/accounts/apitoken/", {"action": "revoke_tokens", "_selected_action": [str(token.pk)]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.get(action="token.revoked", target_id=str(token.pk)).actor == membership.user


def test_finding_2_a_member_without_token_management_cannot_revoke_a_colleagues_token(client):
    operator = MembershipFactory(role=Role.OPERATOR)
    _grant_every_admin_permission(operator.user)
    colleague = MembershipFactory(organization=operator.organization, role=Role.DEVELOPER)
    token = api_token_create(membership=colleague, name="theirs").token
    client.force_login(operator.user)
    assert token.prefix not in client.get("/admin/accounts/apitoken/").content.decode()
    client.post("/admin/accounts/apitoken/", {"action": "revoke_tokens", "_selected_action": [str(token.pk)]})
    token.refresh_from_db()
    assert token.revoked_at is None


def test_finding_3_users_are_managed_by_superusers_only(org_admin, elsewhere):
    client, _ = org_admin
    _, away_owner = elsewhere
    victim = away_owner.user
    assert client.get("/admin/accounts/user/").status_code == 403
    assert client.get(f"/admin/accounts/user/{victim.pk}/change/").status_code in (302, 403, 404)
    password_before = victim.password
    response = client.post(
        f"/admin/accounts/user/{victim.pk}/password/",
        {"password1": "a new long passphrase 1", "password2": "a new long passphrase 1", "usable_password": "true"},
    )
    assert response.status_code in (302, 403, 404)
    victim.refresh_from_db()
    assert victim.password == password_before
    autocomplete = client.get(
        "/admin/autocomplete/",
        {"app_label": "accounts", "model_name": "membership", "field_name": "user", "term": "zqx9w7"},
    )
    assert autocomplete.status_code == 403 and b"zqx9w7" not in autocomplete.content


def test_finding_3_list_filters_name_only_the_staff_users_organizations(org_admin, elsewhere):
    client, membership = org_admin
    away, away_owner = elsewhere
    own, _ = jobs.job_submit(membership=membership, kind="sleep", params={})
    jobs.job_submit(membership=away_owner, kind="sleep", params={})
    for url in ("/admin/jobs/job/", "/admin/accounts/membership/", "/admin/accounts/auditevent/"):
        html = client.get(url).content.decode()
        assert away.slug not in html, url
    assert own.short_id in client.get("/admin/jobs/job/").content.decode()


def test_finding_3_a_superuser_still_manages_every_user(client, elsewhere):
    _, away_owner = elsewhere
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(root)
    assert away_owner.user.username in client.get("/admin/accounts/user/").content.decode()


def test_finding_9_a_superuser_acts_on_an_organization_as_the_platform_operator(client, elsewhere):
    """No fabricated membership: the superuser's admin actions are recorded as the platform operator's."""
    _, away_owner = elsewhere
    job, _ = jobs.job_submit(membership=away_owner, kind="sleep", params={})
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(root)
    client.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
    job.refresh_from_db()
    assert job.status == "cancelled"
    event = AuditEvent.objects.get(action="job.cancelled", target_id=str(job.id))
    assert event.actor == root
    assert event.details.get("via") == "platform operator"
    assert not Membership.objects.filter(user=root).exists()


def test_a_staff_user_acts_in_each_organization_with_the_role_they_hold_there(client):
    """Admin of A, viewer of C: may change A's rows, only see C's."""
    mine = MembershipFactory(role=Role.ADMIN)
    _grant_every_admin_permission(mine.user)
    viewer_of = MembershipFactory(user=mine.user, role=Role.VIEWER)
    colleague_in_c = MembershipFactory(organization=viewer_of.organization, role=Role.DEVELOPER)
    client.force_login(mine.user)

    page = client.get(f"/admin/accounts/membership/{colleague_in_c.pk}/change/")
    assert page.status_code in (302, 403, 404)  # members.read is owner/admin/operator, not viewer
    client.post(f"/admin/accounts/membership/{colleague_in_c.pk}/change/", {"role": Role.ADMIN})
    colleague_in_c.refresh_from_db()
    assert colleague_in_c.role == Role.DEVELOPER

    job, _ = jobs.job_submit(membership=colleague_in_c, kind="sleep", params={})
    assert client.get(f"/admin/jobs/job/{job.id}/change/").status_code == 200  # viewers read jobs
    client.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
    job.refresh_from_db()
    assert job.status == "queued"


def test_stored_files_are_linked_through_the_admin_never_as_presigned_storage_urls(
    org_admin, elsewhere, s3_storage, tmp_path
):
    # FieldFile.url on object storage is a presigned link: a credential for anyone who holds it,
    # past every role check. The admin links its own view, which streams the file to whoever may
    # see the row, and to no one else.
    from apps.core import artifact_storage
    from apps.jobs.models import Artifact
    from apps.registry import services as registry
    from workers.testing_models import build_test_model

    client, membership = org_admin
    _, away_owner = elsewhere
    data = b"id,score\n1,0.5\n"
    pages = []
    for owner in (membership, away_owner):
        name = f"artifacts/uploads/{owner.organization.slug}.csv"
        artifact_storage.store_bytes(name, data)
        artifact = Artifact.objects.create(
            organization=owner.organization,
            owner=owner.user,
            role="input",
            name="scores.csv",
            file=name,
            content_type="text/csv",
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        version, _ = registry.model_version_upload(
            membership=owner, name="scorer", source=build_test_model("multi_io", tmp_path / f"{owner.pk}.onnx")
        )
        pages.append((f"/admin/jobs/artifact/{artifact.pk}", f"/admin/registry/modelversion/{version.pk}", version))

    (artifact_page, version_page, version), (away_artifact, away_version, _) = pages
    for page in (artifact_page, version_page):
        html = client.get(f"{page}/change/").content.decode()
        assert f'href="{page}/file/"' in html
        assert "X-Amz-" not in html and s3_storage.endpoint not in html and s3_storage.bucket not in html
    download = client.get(f"{artifact_page}/file/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == data
    model_bytes = b"".join(client.get(f"{version_page}/file/").streaming_content)
    assert len(model_bytes) == version.size_bytes and hashlib.sha256(model_bytes).hexdigest() == version.sha256
    for page in (away_artifact, away_version):
        assert client.get(f"{page}/file/").status_code == 404
