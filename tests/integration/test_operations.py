"""/metrics access and exact aggregates, and the operator dashboard in the admin."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.models import Role
from apps.jobs.models import Job, WorkerHost
from tests.factories import MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db


def make_job(
    organization, *, kind="sleep", status="succeeded", wait_s=0.0, run_s=None, ago=timedelta(minutes=5), **fields
):
    """A job row with the timestamps a finished (or waiting) job would have."""
    finished = timezone.now() - ago
    started = finished - timedelta(seconds=run_s) if run_s is not None else None
    queued = (started or finished) - timedelta(seconds=wait_s)
    return Job.objects.create(
        organization=organization,
        kind=kind,
        status=status,
        queue=fields.pop("queue", "cpu"),
        queued_at=queued,
        created_at=queued,
        started_at=started,
        finished_at=finished if status in ("succeeded", "failed", "cancelled") else None,
        **fields,
    )


def scrape(client=None, **headers) -> dict:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_metrics_refuse_clients_outside_the_allowed_networks_without_the_token(settings):
    settings.METRICS_TOKEN = "a-long-enough-metrics-token"
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert response.json()["code"] == "not_authenticated" and response.json()["fields"] == {}
    wrong = Client(REMOTE_ADDR="203.0.113.9").get("/metrics", HTTP_AUTHORIZATION="Bearer not-the-token")
    assert wrong.status_code == 401
    # A forwarded header is the client's own claim, never trusted.
    spoofed = Client(REMOTE_ADDR="203.0.113.9").get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert spoofed.status_code == 401


def test_metrics_answer_the_token_or_an_allowed_network(settings):
    settings.METRICS_TOKEN = "a-long-enough-metrics-token"
    outside = Client(REMOTE_ADDR="203.0.113.9")
    assert outside.get("/metrics", HTTP_AUTHORIZATION="Bearer a-long-enough-metrics-token").status_code == 200
    settings.METRICS_ALLOWED_NETWORKS = ["203.0.113.0/24"]
    assert outside.get("/metrics").status_code == 200
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    assert Client().get("/metrics").status_code == 401, "loopback is allowed only while it is listed"


def test_a_bad_network_or_a_short_token_fails_the_system_check(settings):
    from apps.operations.checks import metrics_access

    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "10.0.0.300/32"]
    settings.METRICS_TOKEN = "short"
    errors = metrics_access(None)
    assert [e.id for e in errors] == ["operations.E001", "operations.E002"]
    assert "10.0.0.300/32" in errors[0].msg


def test_histograms_put_each_job_in_its_buckets_by_kind():
    org = OrganizationFactory()
    make_job(org, run_s=0.05, wait_s=0.02)
    make_job(org, run_s=3, wait_s=0.7)
    make_job(org, run_s=70, wait_s=20, status="failed")
    make_job(org, status="queued", wait_s=0)  # never started: in no histogram
    make_job(
        org,
        kind="inference",
        run_s=2,
        wait_s=0.3,
        ago=timedelta(minutes=1),
        result={"rows": 100, "seconds": 1.6, "provider": "P"},
    )
    make_job(org, kind="sandbox", run_s=1, result={"verdict": "timeout"}, status="failed")
    make_job(org, kind="sandbox", status="cancelled")  # cancelled before it ran: no verdict
    samples = scrape()
    sleep = (("kind", "sleep"),)

    def bucket(name, le, labels=sleep):
        return samples[(f"switchyard_{name}_seconds_bucket", (*labels, ("le", le)))]

    assert [bucket("job_duration", le) for le in ("0.1", "2.5", "5.0", "60.0", "300.0", "+Inf")] == [1, 1, 2, 2, 3, 3]
    assert samples[("switchyard_job_duration_seconds_sum", sleep)] == pytest.approx(73.05)
    assert [bucket("job_queue_wait", le) for le in ("0.05", "0.5", "1.0", "10.0", "30.0", "+Inf")] == [1, 1, 2, 2, 3, 3]
    assert samples[("switchyard_jobs_submitted_total", sleep)] == 4
    assert samples[("switchyard_jobs", (*sleep, ("status", "queued")))] == 1
    assert samples[("switchyard_inference_rows_total", (("provider", "P"),))] == 100
    assert samples[("switchyard_inference_rows_per_second", ())] == pytest.approx(100 / 1.6)
    assert samples[("switchyard_sandbox_verdicts_total", (("verdict", "timeout"),))] == 1
    assert samples[("switchyard_sandbox_verdicts_total", (("verdict", "none"),))] == 1


def test_live_worker_hosts_count_per_queue_only_recent_heartbeats():
    now = timezone.now()
    WorkerHost.objects.create(hostname="cpu@a", queues=["cpu"], last_heartbeat_at=now)
    WorkerHost.objects.create(hostname="cpu@b", queues=["cpu", "control"], last_heartbeat_at=now)
    WorkerHost.objects.create(hostname="cpu@silent", queues=["cpu"], last_heartbeat_at=now - timedelta(hours=1))
    WorkerHost.objects.create(hostname="gpu@stopped", queues=["gpu"], last_heartbeat_at=now, stopped_at=now)
    samples = scrape()
    alive = {
        q: samples[("switchyard_worker_hosts_alive", (("queue", q),))] for q in ("cpu", "gpu", "control", "sandbox")
    }
    assert alive == {"cpu": 2, "gpu": 0, "control": 1, "sandbox": 0}


@pytest.fixture
def staff(client):
    def login(*, superuser: bool, organization=None):
        membership = MembershipFactory(
            role=Role.OPERATOR,
            user__is_staff=True,
            user__is_superuser=superuser,
            **({"organization": organization} if organization else {}),
        )
        client.force_login(membership.user)
        return client, membership

    return login


def test_dashboard_shows_queues_charts_slow_and_failing_jobs_and_hosts(staff):
    client, membership = staff(superuser=True)
    org = membership.organization
    slow = make_job(org, run_s=600, ago=timedelta(minutes=3))
    failed = make_job(org, run_s=1, status="failed", error={"code": "time_limit", "message": "too slow"})
    make_job(org, status="queued", queue="gpu", ago=timedelta(minutes=20))
    WorkerHost.objects.create(
        hostname="gpu@box", queues=["gpu"], capabilities={"providers": ["CUDAExecutionProvider"], "cpus": 8}
    )
    response = client.get("/admin/operations/")
    assert response.status_code == 200
    html = response.content.decode()
    assert (
        html.count('class="ops-chart"') == 3 and "Jobs waiting per queue" in html and "Jobs finished per minute" in html
    )
    assert f"/admin/jobs/job/{slow.pk}/change/" in html and "10 min 00 s" in html
    assert f"/admin/jobs/job/{failed.pk}/change/" in html and "time_limit" in html and "too slow" in html
    assert "gpu@box" in html and "CUDAExecutionProvider" in html and "8 cpus" in html
    queues = {row["queue"]: row for row in response.context["queues"]}
    assert queues["gpu"]["queued"] == 1 and queues["gpu"]["workers"] == 1 and queues["cpu"]["queued"] == 0
    assert timedelta(minutes=20) <= queues["gpu"]["oldest_wait"] < timedelta(minutes=21)
    assert queues["cpu"]["oldest_wait"] is None and "20 min 0" in html
    backlog = response.context["backlog_chart"]
    assert "<polyline" in backlog
    assert "gpu: now 1" in backlog, "the queued gpu job waits in the last minute of the chart"
    assert response.context["totals"]["failed"] == 1 and response.context["totals"]["succeeded"] == 1


def test_admin_index_links_the_dashboard(staff):
    client, _ = staff(superuser=True)
    assert 'href="/admin/operations/"' in client.get("/admin/").content.decode()


def test_dashboard_shows_a_staff_member_only_their_organizations_jobs(staff):
    client, membership = staff(superuser=False)
    mine = make_job(membership.organization, run_s=5, status="failed", error={"code": "mine"})
    theirs = make_job(OrganizationFactory(), run_s=50, status="failed", error={"code": "theirs"})
    response = client.get("/admin/operations/")
    assert response.status_code == 200
    html = response.content.decode()
    assert str(mine.pk) in html and str(theirs.pk) not in html
    assert [row["code"] for row in response.context["failures_by_code"]] == ["mine"]
    assert "Jobs of your organizations only" in html


def test_dashboard_needs_staff(client):
    membership = MembershipFactory(role=Role.ADMIN)
    client.force_login(membership.user)
    response = client.get("/admin/operations/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_oldest_queued_job_age_per_queue_sees_work_nobody_claims():
    # The queue-wait histogram counts claimed jobs only; jobs nobody takes show up here.
    org = OrganizationFactory()
    make_job(org, status="queued", queue="cpu", ago=timedelta(minutes=10))
    make_job(org, status="queued", queue="cpu", ago=timedelta(minutes=1))
    make_job(org, status="running", queue="gpu", run_s=5, ago=timedelta(hours=2))
    make_job(org, status="succeeded", queue="sandbox", ago=timedelta(days=1))

    samples = scrape()
    age = {
        queue: samples[("switchyard_queue_oldest_job_age_seconds", (("queue", queue),))]
        for queue in ("cpu", "gpu", "sandbox", "control")
    }
    assert 600 <= age["cpu"] < 630, age
    assert age["gpu"] == age["sandbox"] == age["control"] == 0
