import pytest
from django.contrib.auth.models import Permission

from apps.accounts.models import Role
from apps.jobs import services
from apps.jobs.models import Job, WorkerHost
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    membership = MembershipFactory(role=Role.OPERATOR, user__is_staff=True, user__is_superuser=True)
    client.force_login(membership.user)
    return client, membership


def submit(membership, **params):
    return services.job_submit(membership=membership, kind="sleep", params=params)[0]


def test_job_list_shows_progress_bar_status_and_attempts(staff_client):
    client, membership = staff_client
    job = submit(membership)
    services.job_claim(job_id=job.id, worker="cpu@host1")
    services.job_progress(job_id=job.id, attempt=1, progress=0.4)
    response = client.get("/admin/jobs/job/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<progress value="40" max="100"' in html
    assert "cpu@host1" in html and "1/3" in html and "running" in html


def test_job_page_shows_events_and_the_flower_link(staff_client):
    client, membership = staff_client
    job = submit(membership)
    services.job_claim(job_id=job.id, worker="cpu@host1")
    response = client.get(f"/admin/jobs/job/{job.id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    # The attempt's own task in Flower (apps.jobs.task_events), not the doorbell that ran it.
    assert f"/task/{job.id}:1" in html
    assert "submitted" in html  # the first JobEvent, inline


def test_admin_cancel_and_retry_actions_go_through_the_services(staff_client):
    client, membership = staff_client
    job = submit(membership)
    response = client.post("/admin/jobs/job/", {"action": "cancel_jobs", "_selected_action": [str(job.id)]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.events.filter(to_status="cancelled", actor=membership.user).exists()
    client.post("/admin/jobs/job/", {"action": "retry_jobs", "_selected_action": [str(job.id)]})
    job.refresh_from_db()
    assert job.status == "queued" and job.max_attempts > job.attempt


def test_staff_who_is_not_superuser_sees_only_their_organizations_jobs(client):
    mine = MembershipFactory(role=Role.OPERATOR)
    theirs = MembershipFactory(role=Role.OPERATOR)
    own_job, other_job = submit(mine), submit(theirs)
    staff = UserFactory(is_staff=True)
    mine.user = staff
    mine.save()
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(staff)
    html = client.get("/admin/jobs/job/").content.decode()
    assert own_job.short_id in html and other_job.short_id not in html
    assert client.get(f"/admin/jobs/job/{other_job.id}/change/").status_code in (302, 404)


def test_worker_host_list_shows_liveness_and_capabilities(staff_client):
    client, _ = staff_client
    services.worker_host_register(
        hostname="gpu@box",
        queues=["gpu"],
        version="celery 5.7.0",
        pid=1,
        capabilities={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
    )
    html = client.get("/admin/jobs/workerhost/").content.decode()
    assert "gpu@box" in html and "CUDAExecutionProvider" in html
    assert WorkerHost.objects.get(hostname="gpu@box").is_alive
    assert Job.objects.count() == 0


def test_model_registry_pages_render_with_versions_and_aliases(staff_client, tmp_path):
    from apps.registry import services as registry
    from workers.testing_models import build_test_model

    client, membership = staff_client
    version, _ = registry.model_version_upload(
        membership=membership, name="scorer", source=build_test_model("multi_io", tmp_path / "m.onnx")
    )
    registry.model_version_promote(membership=membership, version=version, stage="production")
    model_page = client.get(f"/admin/registry/mlmodel/{version.model.pk}/change/")
    assert model_page.status_code == 200
    assert "production" in model_page.content.decode() and version.sha256 in model_page.content.decode()
    assert client.get("/admin/registry/modelversion/").status_code == 200


def test_staff_who_is_not_superuser_sees_only_their_organizations_tokens_and_members(client):
    from apps.accounts.services import api_token_create

    mine = MembershipFactory(role=Role.ADMIN, user__is_staff=True)
    theirs = MembershipFactory(role=Role.OWNER)
    own_token = api_token_create(membership=mine, name="mine").token
    other_token = api_token_create(membership=theirs, name="theirs").token
    mine.user.user_permissions.add(*_view_permissions("apitoken", "membership", "organization"))
    client.force_login(mine.user)

    tokens = client.get("/admin/accounts/apitoken/").content.decode()
    assert own_token.prefix in tokens and other_token.prefix not in tokens
    members = client.get("/admin/accounts/membership/").content.decode()
    assert theirs.user.username not in members
    organizations = client.get("/admin/accounts/organization/").content.decode()
    assert mine.organization.slug in organizations and theirs.organization.slug not in organizations


def test_admin_revoke_action_revokes_and_audits(staff_client):
    from apps.accounts.models import AuditEvent
    from apps.accounts.services import api_token_create

    client, membership = staff_client
    token = api_token_create(membership=MembershipFactory(), name="leaked").token
    client.post("/admin/accounts/apitoken/", {"action": "revoke_tokens", "_selected_action": [str(token.pk)]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.get(action="token.revoked", target_id=str(token.pk)).actor == membership.user


def _view_permissions(*models):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename__in=[f"view_{model}" for model in models])


def test_uploaded_inputs_are_listed_read_only_with_their_digest(staff_client, tmp_path):
    import numpy as np

    client, membership = staff_client
    np.savez(tmp_path / "batch.npz", x=np.zeros((3, 4), dtype=np.float32))
    artifact, _ = services.artifact_upload(membership=membership, source=tmp_path / "batch.npz", name="batch.npz")

    listing = client.get("/admin/jobs/artifact/").content.decode()
    assert "batch.npz" in listing and artifact.sha256[:12] in listing and "(upload)" in listing
    page = client.get(f"/admin/jobs/artifact/{artifact.pk}/change/")
    assert page.status_code == 200 and artifact.sha256 in page.content.decode()
    assert 'name="_save"' not in page.content.decode()


def test_a_simulation_job_page_shows_its_chart_and_serves_it_only_to_whom_may_see_the_job(client, settings, tmp_path):
    import hashlib

    from apps.agents.services import agent_create, scenario_create
    from apps.jobs.models import Artifact
    from apps.jobs.services import job_submit

    settings.MEDIA_ROOT = str(tmp_path)
    membership = MembershipFactory(role="developer")
    for name in ("ada", "bo"):
        agent_create(membership=membership, name=name, kind="research")
    scenario = scenario_create(membership=membership, name="village", spec={"rounds": 3})
    job, _ = job_submit(membership=membership, kind="simulation", params={"scenario_id": scenario.pk, "seed": 1})
    png = b"\x89PNG\r\n\x1a\n" + b"chart" * 10
    (tmp_path / "chart.png").write_bytes(png)
    artifact = Artifact.objects.create(
        organization=membership.organization,
        job=job,
        role="output",
        name="chart.png",
        file="chart.png",
        content_type="image/png",
        size_bytes=len(png),
        sha256=hashlib.sha256(png).hexdigest(),
    )
    image_url = f"/admin/jobs/job/{job.pk}/artifacts/{artifact.pk}/"

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200
    assert f'<img src="{image_url}"' in page.content.decode()
    image = client.get(image_url)
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert b"".join(image.streaming_content) == png

    outsider = UserFactory(is_staff=True)
    outsider.user_permissions.add(*Permission.objects.filter(codename="view_job"))
    client.force_login(outsider)
    assert client.get(image_url).status_code == 404


def test_the_scenario_admin_refuses_an_invalid_spec_with_the_field(client):
    from apps.agents.models import Scenario

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    organization = OrganizationFactory()
    response = client.post(
        "/admin/agents/scenario/add/",
        {
            "organization": organization.pk,
            "name": "bad",
            "description": "",
            "spec": '{"rounds": 10, "topology": {"type": "ring"}}',
        },
    )
    assert response.status_code == 200
    assert "spec.topology.type" in response.content.decode()
    assert not Scenario.objects.exists()
    response = client.post(
        "/admin/agents/scenario/add/",
        {"organization": organization.pk, "name": "good", "description": "", "spec": '{"rounds": 10}'},
    )
    assert response.status_code == 302
    assert Scenario.objects.get().spec["topology"] == {"type": "all_pairs"}


def test_invitations_are_sent_and_revoked_in_the_admin_through_the_services(client):
    from apps.accounts.models import AuditEvent, Invitation
    from apps.accounts.services import invitation_create

    admin_member = MembershipFactory(role=Role.ADMIN, user__is_staff=True)
    admin_member.user.user_permissions.add(*Permission.objects.filter(codename__endswith="_invitation"))
    client.force_login(admin_member.user)
    invitation = invitation_create(actor=admin_member, username="newcomer", role=Role.VIEWER)

    assert "newcomer" in client.get("/admin/accounts/invitation/").content.decode()
    page = client.get(f"/admin/accounts/invitation/{invitation.pk}/change/")
    assert page.status_code == 200 and 'name="username"' not in page.content.decode()  # sent: never edited

    add_page = client.get("/admin/accounts/invitation/add/").content.decode()
    assert 'value="owner"' not in add_page  # an admin does not grant owner
    organization = admin_member.organization
    response = client.post(
        "/admin/accounts/invitation/add/", {"organization": organization.pk, "username": "second", "role": "analyst"}
    )
    assert response.status_code == 302
    sent = Invitation.objects.get(username="second")
    assert sent.invited_by == admin_member.user and sent.role == "analyst"
    assert AuditEvent.objects.filter(action="member.invited", target_id=str(sent.pk)).exists()

    client.post("/admin/accounts/invitation/", {"action": "revoke_invitations", "_selected_action": [str(sent.pk)]})
    sent.refresh_from_db()
    assert sent.revoked_at is not None
    assert AuditEvent.objects.filter(action="invitation.revoked", target_id=str(sent.pk)).exists()
