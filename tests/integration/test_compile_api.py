"""Compile requests over REST, registration of a compiled version (fenced), and the promotion gate."""

from pathlib import Path

import pytest
from django.conf import settings

from apps.accounts.models import AuditEvent
from apps.jobs.models import Job, JobStatus
from apps.registry.models import ModelVersion
from apps.registry.services import model_version_register_compiled
from workers.compile import DEFAULT_TOLERANCES, run_compile
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


def stored_model_files() -> set[str]:
    root = Path(settings.MEDIA_ROOT) / "models"
    return {str(p) for p in root.rglob("*.onnx")} if root.exists() else set()


@pytest.fixture
def scorer(member, tmp_path):
    membership, client = member("owner")
    path = build_test_model("multi_io", tmp_path / "multi_io.onnx", seed=41)
    with path.open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart").status_code == 201
    return membership, client


def test_compile_endpoint_submits_a_cpu_job_with_the_tolerance_it_will_be_judged_by(scorer):
    _, client = scorer
    response = client.post(
        "/api/v1/models/scorer/versions/1/compile",
        {"target": "cpu-int8", "tolerance": {"min_cosine": 0.995}, "sample_rows": 8},
        format="json",
    )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["kind"] == "compile" and body["queue"] == "cpu" and body["status"] == "queued"
    params = body["params"]
    assert params["model"] == "scorer@1" and params["target"] == "cpu-int8" and params["sample_rows"] == 8
    assert params["tolerance"] == {**DEFAULT_TOLERANCES["cpu-int8"], "min_cosine": 0.995}
    assert params["model_version_id"] == ModelVersion.objects.get().pk


def test_gpu_fp16_goes_to_cpu_when_no_gpu_worker_is_alive(scorer):
    _, client = scorer
    response = client.post("/api/v1/models/scorer/versions/1/compile", {"target": "gpu-fp16"}, format="json")
    assert response.status_code == 202 and response.json()["queue"] == "cpu"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"target": "tpu"}, "target", "not a valid choice"),
        ({"target": "cpu-int8", "tolerance": {"min_cosine": 2}}, "tolerance.min_cosine", "from -1 to 1"),
        ({"target": "cpu-int8", "tolerance": {"max_abs_error": -1}}, "tolerance.max_abs_error", "at least 0"),
        ({"target": "cpu-int8", "tolerance": {"rtol": 1}}, "tolerance.rtol", "Unknown tolerance"),
        ({"target": "cpu-int8", "tolerance": {"min_cosine": "high"}}, "tolerance.min_cosine", "number"),
        (
            {"target": "cpu-int8", "sample_inputs": {"x": [[1.0, 2.0]], "ids": [[1, 2, 3]]}},
            "sample_inputs.x",
            "4",
        ),
        ({"target": "cpu-int8", "sample_inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}}, "sample_inputs", "ids"),
        ({"target": "cpu-int8", "sample_rows": 0}, "sample_rows", "greater than or equal to 1"),
        ({"target": "cpu-int8", "latency_runs": 1}, "latency_runs", "greater than or equal to 3"),
    ],
)
def test_bad_compile_requests_are_400_naming_the_field(scorer, body, field, words):
    _, client = scorer
    response = client.post("/api/v1/models/scorer/versions/1/compile", body, format="json")
    assert response.status_code == 400, response.json()
    fields = response.json()["fields"]
    key = next(k for k in fields if k.startswith(field))
    assert words in " ".join(fields[key]), fields
    assert Job.objects.count() == 0


def test_unknown_version_and_another_organizations_model_are_404(scorer, member):
    _, client = scorer
    assert (
        client.post("/api/v1/models/scorer/versions/9/compile", {"target": "cpu-int8"}, format="json").status_code
        == 404
    )
    _, outsider = member("owner")
    response = outsider.post("/api/v1/models/scorer/versions/1/compile", {"target": "cpu-int8"}, format="json")
    assert response.status_code == 404 and Job.objects.count() == 0


def test_analysts_and_viewers_may_not_compile(scorer, member):
    membership, _ = scorer
    for role in ("analyst", "viewer"):
        _, client = member(role, organization=membership.organization)
        response = client.post("/api/v1/models/scorer/versions/1/compile", {"target": "cpu-int8"}, format="json")
        assert response.status_code == 403, role


# --- registration of a compiled model (the compile job's finishing step) ------------------------


def _compiled(tmp_path, source: ModelVersion, target="cpu-int8", **kwargs):
    output = tmp_path / f"compiled-{target}.onnx"
    report = run_compile(
        Path(source.file.path),
        target=target,
        output_path=output,
        signature_inputs=source.signature["inputs"],
        latency_runs=3,
        **kwargs,
    )
    return output, report


def _running_job(membership, attempt=1) -> Job:
    job = Job.objects.create(
        organization=membership.organization, owner=membership.user, kind="compile", params={}, queue="cpu"
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempt=attempt)
    return job


def test_a_compiled_model_is_registered_as_a_staging_version_derived_from_its_source(scorer, tmp_path):
    membership, _ = scorer
    source = ModelVersion.objects.get()
    output, report = _compiled(tmp_path, source)
    job = _running_job(membership)

    version, created = model_version_register_compiled(
        source=source, path=output, report=report, target="cpu-int8", job_id=job.pk, attempt=1
    )

    assert created and version.number == 2 and version.stage == "staging" and version.derived_from == source
    assert version.device_preference == "cpu" and version.created_by == membership.user
    assert version.report["passed"] is True and version.report["job_id"] == str(job.pk)
    assert version.report["source"] == "scorer@1" and version.report["target"] == "cpu-int8"
    assert Path(version.file.path).read_bytes() == output.read_bytes()
    # The same bytes again (a retried attempt) give back the same version.
    again = model_version_register_compiled(
        source=source, path=output, report=report, target="cpu-int8", job_id=job.pk, attempt=1
    )
    assert again == (version, False) and ModelVersion.objects.count() == 2


def test_registration_by_an_attempt_that_lost_the_job_leaves_no_row_and_no_file(scorer, tmp_path):
    membership, _ = scorer
    source = ModelVersion.objects.get()
    output, report = _compiled(tmp_path, source)
    job = _running_job(membership, attempt=2)
    files_before = stored_model_files()

    stale = model_version_register_compiled(
        source=source, path=output, report=report, target="cpu-int8", job_id=job.pk, attempt=1
    )
    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)
    cancelled = model_version_register_compiled(
        source=source, path=output, report=report, target="cpu-int8", job_id=job.pk, attempt=2
    )

    assert stale is None and cancelled is None
    assert ModelVersion.objects.count() == 1 and stored_model_files() == files_before


# --- the promotion gate ---------------------------------------------------------------------------


@pytest.fixture
def derived(scorer, tmp_path):
    """scorer@2: an int8 compile of scorer@1 whose report failed (an impossible tolerance)."""
    membership, _ = scorer
    source = ModelVersion.objects.get()
    output, report = _compiled(tmp_path, source, tolerance={"min_cosine": 1.0, "max_abs_error": 0.0})
    assert report["passed"] is False
    version, _ = model_version_register_compiled(
        source=source, path=output, report=report, target="cpu-int8", job_id=_running_job(membership).pk, attempt=1
    )
    return version


def test_a_failed_report_blocks_production_without_a_reason(scorer, derived):
    _, client = scorer
    response = client.post("/api/v1/models/scorer/versions/2/promote", {"stage": "production"}, format="json")
    assert response.status_code == 409, response.json()
    body = response.json()
    assert "override_reason" in body["fields"] and "did not pass validation" in body["detail"]
    assert "mean cosine similarity" in body["detail"]
    derived.refresh_from_db()
    assert derived.stage == "staging" and not derived.aliases.exists()
    # Staging without traffic stays open.
    response = client.post("/api/v1/models/scorer/versions/2/promote", {"stage": "staging"}, format="json")
    assert response.status_code == 200


@pytest.mark.parametrize("weight", [100, 10])
def test_a_failed_report_blocks_canary_traffic_too(scorer, derived, weight):
    # Finding 4 of issue 20: staging with canary_weight 100 served all traffic, no reason, no audit.
    _, client = scorer
    response = client.post(
        "/api/v1/models/scorer/versions/2/promote", {"stage": "staging", "canary_weight": weight}, format="json"
    )
    assert response.status_code == 409, response.json()
    assert "override_reason" in response.json()["fields"]
    assert not derived.aliases.exists()


def test_an_admin_sends_canary_traffic_to_a_failed_version_only_with_an_audited_reason(scorer, derived):
    _, client = scorer
    response = client.post(
        "/api/v1/models/scorer/versions/2/promote",
        {"stage": "staging", "canary_weight": 5, "override_reason": "try int8 on 5% of traffic"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["aliases"] == ["canary"]
    override = AuditEvent.objects.get(action="model.promotion_overridden")
    assert override.details["reason"] == "try int8 on 5% of traffic" and override.details["canary_weight"] == 5


def test_identical_compiled_bytes_keep_every_report_and_the_gate_does_not_depend_on_their_order(
    scorer, member, tmp_path
):
    # Finding 5 of issue 20: the same compiled bytes reused the earlier version and kept its first report.
    membership, client = scorer
    first_source = ModelVersion.objects.get()
    with Path(first_source.file.path).open("rb") as handle:
        assert client.post("/api/v1/models/", {"file": handle, "name": "twin"}, format="multipart").status_code == 201
    second_source = ModelVersion.objects.get(model__name="twin")
    output, passing = _compiled(tmp_path, first_source)
    failing = {**passing, "passed": False, "failures": ["mean cosine similarity 0.9 < 0.999"]}

    versions = []
    for source, reports in ((first_source, [passing, failing]), (second_source, [failing, passing])):
        for report in reports:
            version, _ = model_version_register_compiled(
                source=source,
                path=output,
                report=report,
                target="cpu-int8",
                job_id=_running_job(membership).pk,
                attempt=1,
            )
        versions.append(version)

    for version in versions:
        version.refresh_from_db()
        assert version.report["passed"] is False
        assert [r["passed"] for r in version.report["reports"]] in ([True, False], [False, True])
        assert len({r["job_id"] for r in version.report["reports"]}) == 2
    for name in ("scorer", "twin"):
        response = client.post(f"/api/v1/models/{name}/versions/2/promote", {"stage": "production"}, format="json")
        assert response.status_code == 409, response.json()


def test_an_operator_may_not_override_a_failed_report(scorer, derived, member):
    membership, _ = scorer
    _, operator = member("operator", organization=membership.organization)
    response = operator.post(
        "/api/v1/models/scorer/versions/2/promote",
        {"stage": "production", "override_reason": "looks fine to me"},
        format="json",
    )
    assert response.status_code == 403 and "override" in response.json()["detail"]
    assert not AuditEvent.objects.filter(action="model.promotion_overridden").exists()


def test_an_admin_overrides_with_a_reason_recorded_in_the_audit_trail(scorer, derived, member):
    membership, _ = scorer
    admin, client = member("admin", organization=membership.organization)
    reason = "int8 drift measured on real traffic is within the product's tolerance"
    response = client.post(
        "/api/v1/models/scorer/versions/2/promote", {"stage": "production", "override_reason": reason}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["stage"] == "production" and response.json()["aliases"] == ["production"]
    override = AuditEvent.objects.get(action="model.promotion_overridden")
    assert override.actor == admin.user and override.target_id == str(derived.pk)
    assert override.details["reason"] == reason and override.details["target"] == "cpu-int8"
    assert override.details["failures"] == derived.report["failures"]
    assert AuditEvent.objects.filter(action="model.promoted", target_id=str(derived.pk)).exists()


def test_a_passing_compiled_version_is_promoted_without_a_reason(scorer, member, tmp_path):
    membership, _ = scorer
    source = ModelVersion.objects.get()
    output, report = _compiled(tmp_path, source, target="cpu-optimized")
    model_version_register_compiled(
        source=source,
        path=output,
        report=report,
        target="cpu-optimized",
        job_id=_running_job(membership).pk,
        attempt=1,
    )
    _, operator = member("operator", organization=membership.organization)
    response = operator.post("/api/v1/models/scorer/versions/2/promote", {"stage": "production"}, format="json")
    assert response.status_code == 200, response.json()
    assert not AuditEvent.objects.filter(action="model.promotion_overridden").exists()


def test_admin_compile_action_submits_a_job_per_version_through_the_service(client, tmp_path):
    from django.contrib.auth.models import Permission

    from apps.accounts.models import Role
    from apps.registry.services import model_version_upload
    from tests.factories import MembershipFactory

    staff = MembershipFactory(role=Role.DEVELOPER, user__is_staff=True, user__is_superuser=True)
    # Not a superuser: superusers act as the platform operator; staff act with their role.
    analyst = MembershipFactory(role=Role.ANALYST, user__is_staff=True, organization=staff.organization)
    analyst.user.user_permissions.add(*Permission.objects.filter(codename__endswith="_modelversion"))
    path = build_test_model("mlp", tmp_path / "mlp.onnx")
    version, _ = model_version_upload(membership=staff, name="encoder", source=path)

    client.force_login(staff.user)
    page = client.get("/admin/registry/modelversion/").content.decode()
    assert "Compile to cpu-int8" in page and "Compile to gpu-fp16" in page
    client.post(
        "/admin/registry/modelversion/", {"action": "compile_to_cpu_int8", "_selected_action": [str(version.pk)]}
    )
    job = Job.objects.get()
    assert job.kind == "compile" and job.owner == staff.user
    assert job.params["target"] == "cpu-int8" and job.params["model"] == "encoder@1"

    # The role in the version's organization decides, as everywhere else: analysts may not compile.
    client.force_login(analyst.user)
    response = client.post(
        "/admin/registry/modelversion/",
        {"action": "compile_to_cpu_int8", "_selected_action": [str(version.pk)]},
        follow=True,
    )
    assert "may not compile models" in response.content.decode()
    assert Job.objects.count() == 1


def test_a_named_alias_cannot_send_traffic_to_a_failed_version_without_an_override(scorer, derived):
    _, client = scorer

    refused = client.put("/api/v1/models/scorer/aliases/int8", {"version": 2}, format="json")
    overridden = client.put(
        "/api/v1/models/scorer/aliases/int8", {"version": 2, "override_reason": "A/B test of int8"}, format="json"
    )

    assert refused.status_code == 409 and "override_reason" in refused.json()["fields"]
    assert overridden.status_code == 200, overridden.json()
    assert AuditEvent.objects.get(action="model.promotion_overridden").details["alias"] == "int8"
