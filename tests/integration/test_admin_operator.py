"""The admin as an operator's tool: live status, job buttons, read-only pages, readable JSON, host warnings."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from apps.accounts.models import AuditEvent, Role
from apps.jobs import services
from apps.jobs.models import Job
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db(transaction=True)


def staff_member(role: str, organization=None, *, superuser: bool = False):
    """A staff user holding `role` in an organization, with every Django permission on jobs."""
    kwargs = {"organization": organization} if organization is not None else {}
    membership = MembershipFactory(role=role, user__is_staff=True, user__is_superuser=superuser, **kwargs)
    membership.user.user_permissions.add(*Permission.objects.filter(content_type__app_label="jobs"))
    return membership


def logged_in(membership, **client_kwargs) -> Client:
    client = Client(**client_kwargs)
    client.force_login(membership.user)
    return client


def submit(membership, **params) -> Job:
    return services.job_submit(membership=membership, kind="sleep", params=params)[0]


def running(membership) -> Job:
    job = submit(membership, duration_s=60, steps=60)
    services.job_claim(job_id=job.id, worker="cpu@host1")
    return Job.objects.get(pk=job.pk)


def test_live_view_answers_status_and_progress_only_for_jobs_the_staff_user_may_see():
    mine = staff_member(Role.OPERATOR)
    theirs = MembershipFactory(role=Role.OPERATOR)
    own, other = running(mine), running(theirs)
    services.job_progress(job_id=own.id, attempt=1, progress=0.25, message="step 15/60")
    client = logged_in(mine)

    body = client.get("/admin/jobs/job/live/", {"id": [str(own.id), str(other.id), "not-a-uuid"]}).json()

    assert list(body["jobs"]) == [str(own.id)]
    assert body["jobs"][str(own.id)] == {
        "status": "running",
        "progress": 0.25,
        "progress_message": "step 15/60",
        "attempt": "1/3",
        "worker_host": "cpu@host1",
        "duration": body["jobs"][str(own.id)]["duration"],
    }
    assert Client().get("/admin/jobs/job/live/", {"id": str(own.id)}).status_code == 302  # to the login


def test_job_list_and_page_mark_status_and_progress_for_the_polling_script():
    operator = staff_member(Role.OPERATOR, superuser=True)
    job = running(operator)
    client = logged_in(operator)
    for url in ("/admin/jobs/job/", f"/admin/jobs/job/{job.id}/change/"):
        html = client.get(url).content.decode()
        assert f'data-live-job="{job.id}" data-live-field="status"' in html
        assert f'data-live-job="{job.id}" data-live-field="progress"' in html
        assert "switchyard/live.js" in html and 'data-jobs-url="/admin/jobs/job/live/"' in html


def test_job_page_cancel_button_goes_through_the_service_and_is_audited_like_the_api():
    owner = MembershipFactory(role=Role.DEVELOPER)
    operator = staff_member(Role.OPERATOR, organization=owner.organization)
    job = running(owner)
    client = logged_in(operator, enforce_csrf_checks=True)

    page = client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    assert f'action="/admin/jobs/job/{job.id}/cancel/"' in page
    assert f'action="/admin/jobs/job/{job.id}/retry/"' not in page  # only what applies to a running job
    # A POST without the CSRF token is refused; a GET changes nothing.
    assert client.post(f"/admin/jobs/job/{job.id}/cancel/").status_code == 403
    assert client.get(f"/admin/jobs/job/{job.id}/cancel/").status_code == 405
    assert Job.objects.get(pk=job.pk).status == "running"

    token = client.cookies["csrftoken"].value
    response = client.post(f"/admin/jobs/job/{job.id}/cancel/", {"csrfmiddlewaretoken": token})

    assert response.status_code == 302 and response["Location"] == f"/admin/jobs/job/{job.id}/change/"
    job.refresh_from_db()
    assert job.status == "cancelling"
    assert job.events.filter(to_status="cancelling", actor=operator.user).exists()
    # Someone else's job: audited, as when the operator cancels through the API.
    assert AuditEvent.objects.filter(action="job.cancelled", actor=operator.user).exists()


def test_job_page_buttons_follow_the_permission_matrix():
    owner = MembershipFactory(role=Role.DEVELOPER)
    viewer = staff_member(Role.VIEWER, organization=owner.organization)
    developer = staff_member(Role.DEVELOPER, organization=owner.organization)
    job = submit(owner)
    services.job_cancel(job=job, actor=owner)

    # A viewer may see the job but not retry it: no button, and the POST is refused by the service.
    client = logged_in(viewer)
    assert f"/admin/jobs/job/{job.id}/retry/" not in client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    response = client.post(f"/admin/jobs/job/{job.id}/retry/", follow=True)
    assert "Retry: Role" in response.content.decode()  # the service's refusal, as a warning
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    # A developer may not retry someone else's job either (jobs.manage_any).
    logged_in(developer).post(f"/admin/jobs/job/{job.id}/retry/")
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    # The owner's retry, from the admin, works.
    own_staff = staff_member(Role.DEVELOPER)
    own_job = submit(own_staff)
    services.job_cancel(job=own_job, actor=own_staff)
    logged_in(own_staff).post(f"/admin/jobs/job/{own_job.id}/retry/")
    assert Job.objects.get(pk=own_job.pk).status == "queued"


def test_requeue_is_an_operators_button_for_a_queued_job():
    developer = staff_member(Role.DEVELOPER)
    operator = staff_member(Role.OPERATOR, organization=developer.organization)
    job = submit(developer)

    assert "/requeue/" not in logged_in(developer).get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    logged_in(developer).post(f"/admin/jobs/job/{job.id}/requeue/")
    assert not job.events.filter(message="requeued").exists()

    client = logged_in(operator)
    assert (
        f'action="/admin/jobs/job/{job.id}/requeue/"'
        in client.get(f"/admin/jobs/job/{job.id}/change/").content.decode()
    )
    client.post(f"/admin/jobs/job/{job.id}/requeue/")
    assert job.events.filter(message="requeued", actor=operator.user).exists()


def test_another_organizations_job_cannot_be_operated_from_the_admin():
    operator = staff_member(Role.OPERATOR)
    other = running(MembershipFactory(role=Role.OWNER))
    response = logged_in(operator).post(f"/admin/jobs/job/{other.id}/cancel/")
    assert response.status_code == 404
    assert Job.objects.get(pk=other.pk).status == "running"


def test_read_only_pages_show_no_save_or_delete_button():
    operator = staff_member(Role.OPERATOR, superuser=True)
    job = submit(operator)
    services.worker_host_register(hostname="cpu@ro", queues=["cpu"], capabilities={}, version="t", pid=1)
    client = logged_in(operator)
    from apps.jobs.models import WorkerHost

    host = WorkerHost.objects.get(hostname="cpu@ro")
    for url in (f"/admin/jobs/job/{job.id}/change/", f"/admin/jobs/workerhost/{host.pk}/change/"):
        html = client.get(url).content.decode()
        assert 'name="_save"' not in html and 'name="_continue"' not in html, url
        assert "deletelink" not in html, url
        assert "closelink" in html, url


def test_params_result_and_error_are_pretty_printed_and_collapsible():
    operator = staff_member(Role.OPERATOR, superuser=True)
    job = submit(operator, duration_s=0.5, steps=3)
    services.job_claim(job_id=job.id, worker="cpu@host1")
    result = {"rows": [{"x": index, "label": "y" * 40} for index in range(40)]}
    services.job_finish(job_id=job.id, attempt=1, status="succeeded", worker="cpu@host1", result=result)
    html = logged_in(operator).get(f"/admin/jobs/job/{job.id}/change/").content.decode()

    assert html.count('<details class="json-block"') >= 2
    # Short params open, a long result folded; both indented JSON.
    assert '<details class="json-block" open><summary>' in html
    assert '<details class="json-block"><summary>1 key: rows' in html
    assert "\n  &quot;duration_s&quot;: 0.5," in html
    assert json.dumps(result, indent=2, sort_keys=True).splitlines()[1].replace('"', "&quot;") in html


def test_a_gpu_host_without_a_gpu_provider_is_flagged_with_the_reason():
    operator = staff_member(Role.OPERATOR, superuser=True)
    services.worker_host_register(
        hostname="gpu@nocuda", queues=["gpu"], capabilities={"providers": ["CPUExecutionProvider"]}, version="t", pid=1
    )
    services.worker_host_register(
        hostname="gpu@cuda",
        queues=["gpu"],
        capabilities={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        version="t",
        pid=2,
    )
    client = logged_in(operator)
    for url in ("/admin/jobs/workerhost/", "/admin/operations/"):
        html = client.get(url).content.decode()
        assert html.count("reports no GPU provider (providers: CPUExecutionProvider)") == 1, url


def test_dashboard_live_view_gives_the_queue_counts_of_the_users_organizations():
    mine = staff_member(Role.OPERATOR)
    submit(mine)
    submit(MembershipFactory(role=Role.OPERATOR))
    body = logged_in(mine).get("/admin/operations/live/").json()
    cpu = next(row for row in body["queues"] if row["queue"] == "cpu")
    assert cpu["queued"] == 1 and {row["queue"] for row in body["queues"]} == {"cpu", "gpu", "sandbox", "control"}
    page = logged_in(mine).get("/admin/operations/").content.decode()
    assert 'data-live-queue="cpu" data-live-field="queued"' in page
