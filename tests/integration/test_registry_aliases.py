"""Rollback, alias history, demotion that never leaves an alias dangling, "no such version" that says what exists."""

import datetime

import pytest
from django.utils import timezone

from apps.accounts.models import AuditEvent
from apps.registry.models import ModelAlias, ModelVersion
from workers.testing_models import build_test_model

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scorer(member, tmp_path):
    """scorer@1 (production since its upload: the model's first version) and scorer@2 (a draft); an owner's client."""
    membership, client = member("owner")
    for seed in (1, 2):
        path = build_test_model("multi_io", tmp_path / f"m{seed}.onnx", seed=seed)
        with path.open("rb") as handle:
            response = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
            assert response.status_code == 201, response.json()
    return membership, client, tmp_path


def promote(client, number, **body):
    return client.post(
        f"/api/v1/models/scorer/versions/{number}/promote", {"stage": "production", **body}, format="json"
    )


def test_an_archived_version_is_promoted_back_by_an_owner_and_the_rollback_is_audited(scorer):
    # Finding 9 of issue 20: an archived version could never be promoted again.
    membership, client, _ = scorer
    assert promote(client, 1).status_code == 200
    assert promote(client, 2).status_code == 200
    assert ModelVersion.objects.get(number=1).stage == "archived"

    response = promote(client, 1, reason="v2 raised the error rate")

    assert response.status_code == 200, response.json()
    assert response.json()["stage"] == "production" and response.json()["aliases"] == ["production"]
    assert ModelAlias.objects.get(name="production").version.number == 1
    assert ModelVersion.objects.get(number=2).stage == "archived"
    rollback = AuditEvent.objects.get(action="model.rolled_back")
    assert rollback.actor == membership.user and rollback.details["reason"] == "v2 raised the error rate"
    assert rollback.details["from"] == "archived"


def test_an_operator_may_promote_but_not_roll_back(scorer, member):
    membership, client, _ = scorer
    promote(client, 1)
    promote(client, 2)
    _, operator = member("operator", organization=membership.organization)

    response = promote(operator, 1)

    assert response.status_code == 403, response.json()
    assert ModelAlias.objects.get(name="production").version.number == 2


def test_uploading_the_bytes_of_an_archived_version_again_gives_it_back_ready_to_promote(scorer):
    _, client, tmp_path = scorer
    promote(client, 1)
    promote(client, 2)
    with (tmp_path / "m1.onnx").open("rb") as handle:
        again = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")

    assert again.status_code == 200 and again.json()["number"] == 1 and again.json()["stage"] == "archived"
    assert promote(client, 1).status_code == 200


@pytest.mark.parametrize("stage", ["staging", "draft", "archived"])
def test_demoting_the_production_version_is_refused_rather_than_leaving_the_alias_on_it(scorer, stage):
    _, client, _ = scorer
    promote(client, 1)

    response = client.post("/api/v1/models/scorer/versions/1/promote", {"stage": stage}, format="json")
    if stage == "archived":
        response = client.post("/api/v1/models/scorer/versions/1/archive")

    assert response.status_code == 409, response.json()
    assert "production" in response.json()["detail"]
    version = ModelVersion.objects.get(number=1)
    assert version.stage == "production" and ModelAlias.objects.get(name="production").version == version


def test_alias_history_says_who_moved_which_alias_where_when_and_why(scorer):
    membership, client, _ = scorer
    between = timezone.now()
    promote(client, 2, reason="retrained")
    client.post(
        "/api/v1/models/scorer/versions/1/promote",
        {"stage": "staging", "canary_weight": 20, "reason": "compare"},
        format="json",
    )

    response = client.get("/api/v1/models/scorer/aliases/history")

    assert response.status_code == 200, response.json()
    events = response.json()["results"]
    assert [(e["alias"], e["version"], e["previous_version"]) for e in events] == [
        ("canary", 1, None),
        ("production", 2, 1),
        ("production", 1, None),
    ]
    assert events[0]["weight"] == 20 and events[1]["reason"] == "retrained"
    assert events[2]["actor"] == membership.user.username and events[2]["at"]
    assert events[2]["reason"] == "first version"

    at_between = client.get("/api/v1/models/scorer/aliases/at", {"time": between.isoformat()}).json()
    assert at_between == {"at": between.isoformat(), "aliases": {"production": {"version": 1, "weight": 100}}}
    before = client.get(
        "/api/v1/models/scorer/aliases/at", {"time": (between - datetime.timedelta(days=1)).isoformat()}
    )
    assert before.json()["aliases"] == {}
    refused = client.get("/api/v1/models/scorer/aliases/at", {"time": "yesterday"})
    assert refused.status_code == 400 and "time" in refused.json()["fields"]


def test_alias_history_of_another_organizations_model_is_not_found(scorer, member):
    _, client, _ = scorer
    promote(client, 1)
    _, stranger = member("owner")

    assert stranger.get("/api/v1/models/scorer/aliases/history").status_code == 404


def test_a_new_models_first_version_is_production_from_its_upload_and_the_move_is_audited(member, tmp_path):
    # Finding 10 of issue 20: `models upload --name scorer`, then a job naming "scorer", as the README shows.
    membership, client = member("admin")
    path = build_test_model("multi_io", tmp_path / "m.onnx", seed=1)
    with path.open("rb") as handle:
        uploaded = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")

    job = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer", "inputs": {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}}},
        format="json",
    )

    assert uploaded.status_code == 201, uploaded.json()
    assert uploaded.json()["stage"] == "production" and uploaded.json()["aliases"] == ["production"]
    assert job.status_code == 201, job.json()
    assert job.json()["params"]["model"] == "scorer@1"
    history = client.get("/api/v1/models/scorer/aliases/history").json()["results"]
    assert [(e["alias"], e["version"], e["previous_version"], e["reason"], e["actor"]) for e in history] == [
        ("production", 1, None, "first version", membership.user.username)
    ]
    promoted = AuditEvent.objects.get(action="model.promoted")
    assert promoted.actor == membership.user and promoted.details["reason"] == "first version"
    assert promoted.details["from"] == "draft" and promoted.details["to"] == "production"


def test_later_versions_are_drafts_usable_by_number_and_leave_production_where_it_is(member, tmp_path):
    _, client = member("operator")
    for seed in (1, 2):
        path = build_test_model("multi_io", tmp_path / f"m{seed}.onnx", seed=seed)
        with path.open("rb") as handle:
            client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
    inputs = {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}

    by_name = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer", "inputs": inputs}}, format="json"
    )
    by_number = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@2", "inputs": inputs}}, format="json"
    )

    assert dict(ModelVersion.objects.values_list("number", "stage")) == {1: "production", 2: "draft"}
    assert by_name.status_code == 201 and by_name.json()["params"]["model"] == "scorer@1"
    assert by_number.status_code == 201 and by_number.json()["params"]["model"] == "scorer@2"
    assert AuditEvent.objects.filter(action="model.promoted").count() == 1


def test_naming_a_model_with_nothing_in_production_says_what_exists_and_what_to_do(member, tmp_path):
    # Finding 10 of issue 20: the README's own example failed with "has no such version".
    # A developer may upload but not promote, so its first version stays a draft.
    _, client = member("developer")
    for seed in (1, 2):
        path = build_test_model("multi_io", tmp_path / f"m{seed}.onnx", seed=seed)
        with path.open("rb") as handle:
            uploaded = client.post("/api/v1/models/", {"file": handle, "name": "scorer"}, format="multipart")
        assert uploaded.status_code == 201 and uploaded.json()["stage"] == "draft", uploaded.json()

    response = client.post(
        "/api/v1/jobs/",
        {"kind": "inference", "params": {"model": "scorer", "inputs": {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}}},
        format="json",
    )

    assert response.status_code == 400
    message = " ".join(response.json()["fields"]["params.model"])
    assert "scorer@1 (draft)" in message and "scorer@2 (draft)" in message
    assert "no production version" in message and "promote" in message
    assert "admin, operator, owner" in message and "manage.py models promote scorer@N" in message


def test_a_new_version_is_usable_by_number_at_once_and_a_missing_number_names_what_exists(scorer):
    _, client, _ = scorer
    inputs = {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}

    by_number = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@2", "inputs": inputs}}, format="json"
    )
    missing = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@9", "inputs": inputs}}, format="json"
    )

    assert by_number.status_code == 201, by_number.json()
    message = " ".join(missing.json()["fields"]["params.model"])
    assert "no version 9" in message and "scorer@1 (production)" in message and "scorer@2 (draft)" in message
    assert "production -> 1" in message


def test_a_named_alias_picks_a_version_for_jobs_and_its_moves_are_in_the_history(scorer):
    _, client, _ = scorer
    inputs = {"x": [[1, 2, 3, 4]], "ids": [[1, 2, 3]]}

    moved = client.put("/api/v1/models/scorer/aliases/stable", {"version": 2, "reason": "pinned"}, format="json")
    job = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@stable", "inputs": inputs}}, format="json"
    )
    removed = client.delete("/api/v1/models/scorer/aliases/stable")
    after = client.post(
        "/api/v1/jobs/", {"kind": "inference", "params": {"model": "scorer@stable", "inputs": inputs}}, format="json"
    )

    assert moved.status_code == 200, moved.json()
    assert moved.json() == {"alias": "stable", "version": 2, "weight": 100}
    assert job.status_code == 201 and job.json()["params"]["model"] == "scorer@2"
    assert removed.status_code == 204
    assert after.status_code == 400 and "stable" in " ".join(after.json()["fields"]["params.model"])
    history = client.get("/api/v1/models/scorer/aliases/history").json()["results"]
    assert [(e["alias"], e["version"], e["previous_version"]) for e in history[:2]] == [
        ("stable", None, 2),
        ("stable", 2, None),
    ]
    assert history[1]["reason"] == "pinned"
    assert AuditEvent.objects.filter(action="model.alias_moved").count() == 2


@pytest.mark.parametrize("alias", ["production", "canary", "history", "9", "Bad Name"])
def test_reserved_and_malformed_alias_names_are_refused(scorer, alias):
    _, client, _ = scorer

    response = client.put(f"/api/v1/models/scorer/aliases/{alias}", {"version": 1}, format="json")

    assert response.status_code in (400, 404, 405), response.content
    assert list(ModelAlias.objects.values_list("name", "version__number")) == [("production", 1)]


def test_a_named_alias_is_moved_by_promoters_only(scorer, member):
    membership, _, _ = scorer
    _, developer = member("developer", organization=membership.organization)

    response = developer.put("/api/v1/models/scorer/aliases/stable", {"version": 1}, format="json")

    assert response.status_code == 403


def test_admin_promote_action_goes_through_the_service_and_rolls_back_for_owners_only(scorer, client):
    from django.contrib.auth.models import Permission

    from tests.factories import MembershipFactory

    membership, api, _ = scorer
    promote(api, 1)
    promote(api, 2)
    v1 = ModelVersion.objects.get(number=1)
    operator = MembershipFactory(role="operator", user__is_staff=True, organization=membership.organization)
    operator.user.user_permissions.add(*Permission.objects.filter(codename__endswith="_modelversion"))
    owner = MembershipFactory(role="owner", user__is_staff=True, organization=membership.organization)
    owner.user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_modelversion", "change_modelversion", "view_modelaliasevent"])
    )
    action = {"action": "promote_to_production", "_selected_action": [str(v1.pk)]}

    client.force_login(operator.user)
    refused = client.post("/admin/registry/modelversion/", action, follow=True).content.decode()
    client.force_login(owner.user)
    client.post("/admin/registry/modelversion/", action)

    assert "may not roll back" in refused
    assert ModelAlias.objects.get(name="production").version == v1
    assert AuditEvent.objects.get(action="model.rolled_back").actor == owner.user
    history = client.get("/admin/registry/modelaliasevent/").content.decode()
    assert "admin action by" in history
