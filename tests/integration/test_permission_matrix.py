"""The whole permission matrix over REST: every endpoint x every role x own/other organization.

Each case runs against the same small world (two organizations with jobs, a model, an
artifact, members and tokens), rolled back after each role so that a removal or an
archive by one role does not change what the next one sees.
"""

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from apps.accounts import permissions as p
from apps.accounts.models import Membership, Role
from apps.accounts.services import api_token_create, invitation_create
from apps.agents.services import agent_create, memory_create, scenario_create
from apps.jobs.models import Artifact, Job, JobStatus, Schedule
from apps.jobs.services import artifact_upload, job_submit
from apps.jobs.services.schedules import schedule_create
from apps.registry.services import model_version_upload
from tests.factories import MembershipFactory, OrganizationFactory
from workers.testing_models import build_test_model

ALL = frozenset(Role.values)
VECTOR = [1.0] + [0.0] * 383
MEMORIES_JSONL = b'{"text": "imported", "embedding": [1.0' + b", 0.0" * 383 + b"]}\n"


@dataclass(frozen=True)
class Endpoint:
    name: str  # the URL name; several cases may test one URL
    method: str
    path: str  # formatted with the world's objects
    allowed: frozenset  # roles that succeed in their own organization
    ok: int = 200
    denied: int = 403  # 404 where a role may not even see the object exists
    body: dict | None = None
    upload: str = ""  # multipart body: "onnx" (a model) or "memories" (a JSONL import)
    object_scoped: bool = True  # False: a collection; the other-organization case checks what it lists
    scope: str = ""
    case: str = field(default="")

    @property
    def id(self) -> str:
        return f"{self.name}{'[' + self.case + ']' if self.case else ''}"


ENDPOINTS = [
    Endpoint("api-root", "GET", "/api/v1/", ALL, object_scoped=False, scope="read"),
    Endpoint("me", "GET", "/api/v1/me", ALL, object_scoped=False, scope="read"),
    Endpoint("quota", "GET", "/api/v1/quota", p.PERMISSIONS[p.READ_QUOTAS], object_scoped=False, scope="jobs:read"),
    Endpoint("job-kinds", "GET", "/api/v1/jobs/kinds/", ALL, object_scoped=False, scope="jobs:read"),
    Endpoint("queues", "GET", "/api/v1/queues/", ALL, object_scoped=False, scope="jobs:read"),
    Endpoint("queue-detail", "GET", "/api/v1/queues/cpu/", ALL, object_scoped=False, scope="jobs:read"),
    # Pausing is a platform operator's (superuser's): no role of any organization may.
    Endpoint(
        "queue-detail",
        "PATCH",
        "/api/v1/queues/cpu/",
        frozenset(),
        body={"paused": False},
        object_scoped=False,
        scope="jobs:write",
    ),
    Endpoint(
        "jobs-bulk",
        "POST",
        "/api/v1/jobs/bulk",
        p.SUBMIT_BY_KIND["sleep"],
        ok=201,
        body={"jobs": [{"kind": "sleep", "params": {}}]},
        object_scoped=False,
        scope="jobs:write",
    ),
    Endpoint("jobs", "GET", "/api/v1/jobs/", p.PERMISSIONS[p.READ_JOBS], object_scoped=False, scope="jobs:read"),
    Endpoint(
        "jobs",
        "POST",
        "/api/v1/jobs/",
        p.SUBMIT_BY_KIND["sleep"],
        ok=201,
        body={"kind": "sleep", "params": {}},
        object_scoped=False,
        scope="jobs:write",
        case="sleep",
    ),
    Endpoint(
        "jobs",
        "POST",
        "/api/v1/jobs/",
        p.SUBMIT_BY_KIND["sandbox"],
        ok=201,
        body={"kind": "sandbox", "params": {"source": "print(1)"}},
        object_scoped=False,
        scope="jobs:write",
        case="sandbox",
    ),
    Endpoint("job-detail", "GET", "/api/v1/jobs/{job}/", ALL, scope="jobs:read"),
    Endpoint("job-events", "GET", "/api/v1/jobs/{job}/events", ALL, scope="jobs:read"),
    Endpoint("job-artifacts", "GET", "/api/v1/jobs/{job}/artifacts", ALL, scope="jobs:read"),
    Endpoint(
        "job-artifact-download", "GET", "/api/v1/jobs/{job}/artifacts/{artifact}/download", ALL, scope="jobs:read"
    ),
    Endpoint(
        "job-cancel",
        "POST",
        "/api/v1/jobs/{job}/cancel",
        p.PERMISSIONS[p.MANAGE_ANY_JOB],
        ok=202,
        scope="jobs:write",
        case="someone else's",
    ),
    Endpoint(
        "job-retry",
        "POST",
        "/api/v1/jobs/{failed_job}/retry",
        p.PERMISSIONS[p.MANAGE_ANY_JOB],
        ok=202,
        scope="jobs:write",
        case="someone else's",
    ),
    Endpoint(
        "models", "GET", "/api/v1/models/", p.PERMISSIONS[p.READ_MODELS], object_scoped=False, scope="models:read"
    ),
    Endpoint(
        "models",
        "POST",
        "/api/v1/models/",
        p.PERMISSIONS[p.UPLOAD_MODELS],
        ok=201,
        upload="onnx",
        object_scoped=False,
        scope="models:write",
    ),
    Endpoint("model-detail", "GET", "/api/v1/models/{model}/", p.PERMISSIONS[p.READ_MODELS], scope="models:read"),
    Endpoint(
        "model-alias",
        "PUT",
        "/api/v1/models/{model}/aliases/stable",
        p.PERMISSIONS[p.PROMOTE_MODELS],
        body={"version": 1},
        scope="models:write",
    ),
    Endpoint(
        "model-alias",
        "DELETE",
        "/api/v1/models/{model}/aliases/stable",
        p.PERMISSIONS[p.PROMOTE_MODELS],
        ok=204,
        scope="models:write",
        case="remove",
    ),
    Endpoint(
        "model-alias-history",
        "GET",
        "/api/v1/models/{model}/aliases/history",
        p.PERMISSIONS[p.READ_MODELS],
        scope="models:read",
    ),
    Endpoint(
        "model-aliases-at",
        "GET",
        "/api/v1/models/{model}/aliases/at?time=2026-01-01T00:00:00Z",
        p.PERMISSIONS[p.READ_MODELS],
        scope="models:read",
    ),
    Endpoint(
        "model-promote",
        "POST",
        "/api/v1/models/{model}/versions/1/promote",
        p.PERMISSIONS[p.PROMOTE_MODELS],
        body={"stage": "production"},
        scope="models:write",
    ),
    Endpoint(
        "model-compile",
        "POST",
        "/api/v1/models/{model}/versions/1/compile",
        p.PERMISSIONS[p.COMPILE_MODELS],
        ok=202,
        body={"target": "cpu-int8"},
        scope="models:write",
    ),
    Endpoint(
        "model-archive",
        "POST",
        "/api/v1/models/{model}/versions/1/archive",
        p.PERMISSIONS[p.PROMOTE_MODELS],
        scope="models:write",
    ),
    Endpoint(
        "members", "GET", "/api/v1/members/", p.PERMISSIONS[p.READ_MEMBERS], object_scoped=False, scope="members:read"
    ),
    Endpoint(
        "invitations",
        "GET",
        "/api/v1/invitations/",
        p.PERMISSIONS[p.READ_MEMBERS],
        object_scoped=False,
        scope="members:read",
    ),
    Endpoint(
        "invitations",
        "POST",
        "/api/v1/invitations/",
        p.PERMISSIONS[p.MANAGE_MEMBERS],
        ok=201,
        body={"username": "{outsider}", "role": "viewer"},
        object_scoped=False,
        scope="members:write",
    ),
    Endpoint(
        "invitation-revoke",
        "POST",
        "/api/v1/invitations/{invitation}/revoke",
        p.PERMISSIONS[p.MANAGE_MEMBERS],
        scope="members:write",
    ),
    Endpoint(
        "invitations-received",
        "GET",
        "/api/v1/invitations/received",
        p.PERMISSIONS[p.READ_INVITATIONS],
        object_scoped=False,
        scope="invitations:read",
    ),
    # {received_invitation} is addressed to the caller in its own-organization cases (sent by the
    # other organization) and to someone else in the other-organization case: 404 for everyone.
    Endpoint(
        "invitation-accept",
        "POST",
        "/api/v1/invitations/{received_invitation}/accept",
        p.PERMISSIONS[p.RESPOND_TO_INVITATIONS],
        scope="invitations:write",
    ),
    Endpoint(
        "invitation-decline",
        "POST",
        "/api/v1/invitations/{received_invitation}/decline",
        p.PERMISSIONS[p.RESPOND_TO_INVITATIONS],
        scope="invitations:write",
    ),
    Endpoint(
        "member-detail",
        "PATCH",
        "/api/v1/members/{colleague}",
        p.PERMISSIONS[p.MANAGE_MEMBERS],
        body={"role": "analyst"},
        scope="members:write",
    ),
    Endpoint(
        "member-detail",
        "DELETE",
        "/api/v1/members/{colleague}",
        p.PERMISSIONS[p.MANAGE_MEMBERS],
        ok=204,
        scope="members:write",
    ),
    Endpoint(
        "tokens", "GET", "/api/v1/tokens/", p.PERMISSIONS[p.MANAGE_OWN_TOKENS], object_scoped=False, scope="tokens:read"
    ),
    Endpoint(
        "tokens",
        "POST",
        "/api/v1/tokens/",
        p.PERMISSIONS[p.MANAGE_OWN_TOKENS],
        ok=201,
        body={"name": "new", "scopes": ["tokens:read"]},
        object_scoped=False,
        scope="tokens:write",
    ),
    Endpoint(
        "token-revoke",
        "POST",
        "/api/v1/tokens/{colleague_token}/revoke",
        p.PERMISSIONS[p.MANAGE_ANY_TOKEN],
        denied=404,  # other members' tokens are not listed to these roles at all
        scope="tokens:write",
        case="someone else's",
    ),
    Endpoint("audit", "GET", "/api/v1/audit/", p.PERMISSIONS[p.READ_AUDIT], object_scoped=False, scope="audit:read"),
    Endpoint(
        "artifacts", "GET", "/api/v1/artifacts/", p.PERMISSIONS[p.READ_JOBS], object_scoped=False, scope="jobs:read"
    ),
    Endpoint(
        "artifacts",
        "POST",
        "/api/v1/artifacts/",
        p.PERMISSIONS[p.SUBMIT_JOBS],
        ok=201,
        upload="npz",
        object_scoped=False,
        scope="jobs:write",
    ),
    Endpoint("artifact-detail", "GET", "/api/v1/artifacts/{upload}/", ALL, scope="jobs:read"),
    Endpoint("artifact-download", "GET", "/api/v1/artifacts/{upload}/download", ALL, scope="jobs:read"),
    Endpoint(
        "agents", "GET", "/api/v1/agents/", p.PERMISSIONS[p.READ_AGENTS], object_scoped=False, scope="agents:read"
    ),
    Endpoint(
        "agents",
        "POST",
        "/api/v1/agents/",
        p.PERMISSIONS[p.MANAGE_AGENTS],
        ok=201,
        body={"name": "new-agent", "kind": "research", "embedding": "{vector}"},
        object_scoped=False,
        scope="agents:write",
    ),
    Endpoint("agent-detail", "GET", "/api/v1/agents/{agent}/", p.PERMISSIONS[p.READ_AGENTS], scope="agents:read"),
    Endpoint(
        "agent-similar", "GET", "/api/v1/agents/{agent}/similar", p.PERMISSIONS[p.READ_AGENTS], scope="agents:read"
    ),
    Endpoint(
        "agent-memories", "GET", "/api/v1/agents/{agent}/memories/", p.PERMISSIONS[p.READ_AGENTS], scope="agents:read"
    ),
    Endpoint(
        "agent-memories",
        "POST",
        "/api/v1/agents/{agent}/memories/",
        p.PERMISSIONS[p.MANAGE_AGENTS],
        ok=201,
        body={"text": "met at the workshop", "embedding": "{vector}"},
        scope="agents:write",
    ),
    Endpoint(
        "agent-memories-search",
        "GET",
        "/api/v1/agents/{agent}/memories/search?q=workshop",
        p.PERMISSIONS[p.READ_AGENTS],
        # No embedding model in this world: text search is allowed, then answers that none is installed.
        ok=409,
        scope="agents:read",
    ),
    Endpoint(
        "agent-memories-search",
        "POST",
        "/api/v1/agents/{agent}/memories/search",
        p.PERMISSIONS[p.READ_AGENTS],
        body={"vector": "{vector}", "k": 3},
        scope="agents:read",
    ),
    Endpoint(
        "agent-memories-import",
        "POST",
        "/api/v1/agents/{agent}/memories/import",
        p.SUBMIT_BY_KIND["memory_import"],
        ok=202,
        upload="memories",
        scope="agents:write",
    ),
    Endpoint(
        "scenarios",
        "GET",
        "/api/v1/scenarios/",
        p.PERMISSIONS[p.READ_SCENARIOS],
        object_scoped=False,
        scope="scenarios:read",
    ),
    Endpoint(
        "scenarios",
        "POST",
        "/api/v1/scenarios/",
        p.PERMISSIONS[p.MANAGE_SCENARIOS],
        ok=201,
        body={"name": "new-scenario", "spec": {"rounds": 5}},
        object_scoped=False,
        scope="scenarios:write",
    ),
    Endpoint(
        "scenario-detail",
        "GET",
        "/api/v1/scenarios/{scenario}/",
        p.PERMISSIONS[p.READ_SCENARIOS],
        scope="scenarios:read",
    ),
    Endpoint(
        "scenario-detail",
        "PATCH",
        "/api/v1/scenarios/{scenario}/",
        p.PERMISSIONS[p.MANAGE_SCENARIOS],
        body={"description": "changed"},
        scope="scenarios:write",
    ),
    Endpoint(
        "scenario-detail",
        "DELETE",
        "/api/v1/scenarios/{scenario}/",
        p.PERMISSIONS[p.MANAGE_SCENARIOS],
        ok=204,
        scope="scenarios:write",
    ),
    Endpoint(
        "schedules",
        "GET",
        "/api/v1/schedules/",
        p.PERMISSIONS[p.READ_SCHEDULES],
        object_scoped=False,
        scope="jobs:read",
    ),
    Endpoint(
        "schedules",
        "POST",
        "/api/v1/schedules/",
        p.PERMISSIONS[p.MANAGE_SCHEDULES] & p.SUBMIT_BY_KIND["sleep"],
        ok=201,
        body={"name": "new-schedule", "kind": "sleep", "params": {}, "interval_seconds": 60},
        object_scoped=False,
        scope="jobs:write",
    ),
    Endpoint(
        "schedule-detail", "GET", "/api/v1/schedules/{schedule}/", p.PERMISSIONS[p.READ_SCHEDULES], scope="jobs:read"
    ),
    Endpoint(
        "schedule-detail",
        "PATCH",
        "/api/v1/schedules/{schedule}/",
        p.PERMISSIONS[p.MANAGE_ANY_SCHEDULE],
        body={"enabled": False},
        scope="jobs:write",
        case="someone else's",
    ),
    Endpoint(
        "schedule-detail",
        "DELETE",
        "/api/v1/schedules/{schedule}/",
        p.PERMISSIONS[p.MANAGE_ANY_SCHEDULE],
        ok=204,
        scope="jobs:write",
        case="someone else's",
    ),
    Endpoint("scenario-runs", "GET", "/api/v1/scenarios/{scenario}/runs", ALL, scope="jobs:read"),
    Endpoint(
        "scenario-runs",
        "POST",
        "/api/v1/scenarios/{scenario}/runs",
        p.SUBMIT_BY_KIND["simulation"],
        ok=201,
        body={"seed": 1},
        scope="jobs:write",
    ),
    Endpoint(
        "scenario-sweeps",
        "POST",
        "/api/v1/scenarios/{scenario}/sweeps",
        p.SUBMIT_BY_KIND["simulation_sweep"],
        ok=201,
        body={"grid": {"learning_rate": [0.1, 0.2]}, "replications": 1},
        scope="jobs:write",
    ),
]

# Own-object variants where the rule differs from the someone-else's case above.
OWN_ENDPOINTS = [
    Endpoint("api-root", "GET", "/api/v1/", ALL, object_scoped=False, scope="read"),
    Endpoint("job-cancel", "POST", "/api/v1/jobs/{own_job}/cancel", p.PERMISSIONS[p.SUBMIT_JOBS], ok=202, case="own"),
    Endpoint("token-revoke", "POST", "/api/v1/tokens/{own_token}/revoke", ALL, case="own"),
    Endpoint(
        "schedule-detail",
        "PATCH",
        "/api/v1/schedules/{own_schedule}/",
        p.PERMISSIONS[p.MANAGE_SCHEDULES],
        body={"enabled": False},
        case="own",
    ),
]


@dataclass
class World:
    home: object
    away: object
    values: dict  # path placeholders -> the home organization's objects
    away_values: dict  # the same placeholders -> the other organization's objects
    onnx: Path
    away_inviter: object  # an admin of the other organization, who invites callers there


def _seed_organization(organization, tmp_path: Path, tag: str) -> dict:
    colleague = MembershipFactory(organization=organization, role=Role.DEVELOPER)
    job, _ = job_submit(membership=colleague, kind="sleep", params={})
    failed, _ = job_submit(membership=colleague, kind="sleep", params={})
    Job.objects.filter(pk=failed.pk).update(status=JobStatus.FAILED, attempt=1)
    model_file = build_test_model("multi_io", tmp_path / f"{tag}.onnx", seed=hash(tag) % 1000)
    version, _ = model_version_upload(membership=colleague, name=f"model-{tag}", source=model_file)
    content = f"output of {tag}".encode()
    relative = f"artifacts/matrix-{tag}.txt"
    stored = _media_root() / relative
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(content)
    artifact = Artifact.objects.create(
        organization=organization,
        job=job,
        role="output",
        name="out.txt",
        file=relative,
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )
    token = api_token_create(membership=colleague, name="colleague").token
    upload_file = tmp_path / f"inputs-{tag}.npz"
    np.savez(upload_file, x=np.full((2, 3), len(tag), dtype=np.float32))
    upload, _ = artifact_upload(membership=colleague, source=upload_file, name="inputs.npz")
    agent = agent_create(membership=colleague, name=f"agent-{tag}", kind="research", embedding=VECTOR)
    memory_create(membership=colleague, agent=agent, text=f"memory of {tag}", embedding=VECTOR)
    agent_create(membership=colleague, name=f"partner-{tag}", kind="partner", embedding=VECTOR)
    scenario = scenario_create(membership=colleague, name=f"scenario-{tag}", spec={"rounds": 10})
    schedule = schedule_create(
        membership=colleague, name=f"schedule-{tag}", kind="sleep", params={}, interval_seconds=60
    )
    inviter = MembershipFactory(organization=organization, role=Role.ADMIN)
    invitation = invitation_create(actor=inviter, username=f"invitee-{tag}", role=Role.VIEWER)
    return {
        "invitation": invitation.pk,
        "received_invitation": invitation.pk,
        "scenario": scenario.pk,
        "schedule": schedule.pk,
        "agent": agent.pk,
        "upload": upload.pk,
        "job": job.pk,
        "failed_job": failed.pk,
        "artifact": artifact.pk,
        "model": version.model.name,
        "agent_name": agent.name,
        "colleague": colleague.user.username,
        "colleague_token": token.prefix,
    }


def _media_root() -> Path:
    from django.conf import settings

    return Path(settings.MEDIA_ROOT)


@pytest.fixture
def world(db, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    home, away = OrganizationFactory(), OrganizationFactory()
    # A second owner, so that removing or demoting an owner in a case is never the last one.
    MembershipFactory(organization=home, role=Role.OWNER)
    values = _seed_organization(home, tmp_path, "home")
    away_values = _seed_organization(away, tmp_path, "away")
    outsider = MembershipFactory(organization=away, role=Role.VIEWER).user.username
    values["outsider"] = away_values["outsider"] = outsider
    onnx = build_test_model("multi_io", tmp_path / "upload.onnx", seed=777)
    away_inviter = Membership.objects.get(organization=away, role=Role.ADMIN)
    return World(home=home, away=away, values=values, away_values=away_values, onnx=onnx, away_inviter=away_inviter)


def _call(client: APIClient, endpoint: Endpoint, values: dict, onnx: Path):
    path = endpoint.path.format(**values)
    if endpoint.upload == "onnx":
        with onnx.open("rb") as handle:
            return client.post(path, {"file": handle, "name": "uploaded"}, format="multipart")
    if endpoint.upload == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, x=np.zeros((2, 3), dtype=np.float32))
        return client.post(path, {"file": SimpleUploadedFile("batch.npz", buffer.getvalue())}, format="multipart")
    if endpoint.upload == "memories":
        upload = SimpleUploadedFile("memories.jsonl", MEMORIES_JSONL)
        return client.post(path, {"file": upload}, format="multipart")
    body = {key: _fill(value, values) for key, value in (endpoint.body or {}).items()}
    if endpoint.method == "GET":
        return client.get(path)
    return getattr(client, endpoint.method.lower())(path, body, format="json")


def _fill(value, values: dict):
    if value == "{vector}":
        return VECTOR
    return value.format(**values) if isinstance(value, str) else value


def _client_for(membership, scopes=None) -> APIClient:
    client = APIClient()
    token = api_token_create(membership=membership, name="matrix", scopes=scopes).plaintext
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def _with_own_objects(world: World, endpoint: Endpoint, caller, values: dict) -> dict:
    """`values` plus the caller's own objects that the endpoint's path names."""
    values = dict(values)
    if "{own_job}" in endpoint.path:
        values["own_job"] = job_submit(
            membership=MembershipFactory(organization=world.home, role=Role.OWNER), kind="sleep", params={}
        )[0].pk
        Job.objects.filter(pk=values["own_job"]).update(owner=caller.user)
    if "{own_schedule}" in endpoint.path:
        owner = MembershipFactory(organization=world.home, role=Role.OWNER)
        schedule = schedule_create(membership=owner, name="own", kind="sleep", params={}, interval_seconds=60)
        Schedule.objects.filter(pk=schedule.pk).update(created_by=caller.user)
        values["own_schedule"] = schedule.pk
    if "{own_token}" in endpoint.path:
        values["own_token"] = api_token_create(membership=caller, name="own").token.prefix
    if "{received_invitation}" in endpoint.path:
        values["received_invitation"] = invitation_create(
            actor=world.away_inviter, username=caller.user.username, role=Role.VIEWER
        ).pk
    return values


def _run_as_each_role(world: World, endpoint: Endpoint, *, values: dict) -> list[str]:
    mismatches = []
    for role in Role.values:
        with transaction.atomic():
            caller = MembershipFactory(organization=world.home, role=role)
            case_values = _with_own_objects(world, endpoint, caller, values)
            response = _call(_client_for(caller), endpoint, case_values, world.onnx)
            status_code = response.status_code
            transaction.set_rollback(True)
        expected = endpoint.ok if role in endpoint.allowed else endpoint.denied
        if status_code != expected:
            mismatches.append(f"{role}: expected {expected}, got {status_code} {response.content[:200]!r}")
    return mismatches


@pytest.mark.parametrize("endpoint", ENDPOINTS + OWN_ENDPOINTS, ids=lambda e: f"{e.method} {e.id}")
def test_own_organization(world, endpoint):
    mismatches = _run_as_each_role(world, endpoint, values=world.values)
    assert not mismatches, f"{endpoint.method} {endpoint.path}:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.object_scoped], ids=lambda e: f"{e.method} {e.id}")
def test_other_organizations_objects_are_404_for_every_role(world, endpoint):
    mismatches = []
    for role in Role.values:
        with transaction.atomic():
            caller = MembershipFactory(organization=world.home, role=role)
            response = _call(_client_for(caller), endpoint, world.away_values, world.onnx)
            transaction.set_rollback(True)
        body = response.content.decode(errors="replace")
        if response.status_code != 404 or world.away.slug in body:
            mismatches.append(f"{role}: got {response.status_code} {body[:200]}")
    assert not mismatches, f"{endpoint.method} {endpoint.path}:\n" + "\n".join(mismatches)


@pytest.mark.parametrize(
    "endpoint", [e for e in ENDPOINTS if not e.object_scoped and e.method == "GET"], ids=lambda e: e.id
)
def test_collections_never_list_another_organizations_objects(world, endpoint):
    caller = MembershipFactory(organization=world.home, role=Role.OWNER)
    body = _call(_client_for(caller), endpoint, world.values, world.onnx).content.decode()
    for name, value in world.away_values.items():
        # Small integer ids could match any number in the body; names and UUIDs cannot.
        if name != "outsider" and len(str(value)) >= 6:
            assert str(value) not in body, f"{endpoint.path} shows the other organization's {name}"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.id}")
def test_a_token_without_the_endpoints_scope_is_refused(world, endpoint):
    caller = MembershipFactory(organization=world.home, role=Role.OWNER)
    area, _, level = endpoint.scope.partition(":")
    # The broadest scopes that still miss this one: every other area, and `<area>:read` for a write.
    others = [scope for scope in p.SCOPES if scope not in ("*", "read") and not scope.startswith(f"{area}:")]
    if level == "write":
        others += [f"{area}:read", "read"]
    if endpoint.scope == "read":
        others = ["jobs:write"]  # /me needs the general `read` scope
    values = _with_own_objects(world, endpoint, caller, world.values)
    response = _call(_client_for(caller, scopes=others), endpoint, values, world.onnx)
    assert response.status_code == 403, response.content
    assert endpoint.scope in response.json()["detail"]
    allowed = _call(_client_for(caller, scopes=[endpoint.scope]), endpoint, values, world.onnx)
    if not endpoint.allowed:  # a platform operator's endpoint: past the scope, the role is refused
        assert allowed.status_code == endpoint.denied and endpoint.scope not in allowed.json()["detail"]
        return
    assert allowed.status_code == endpoint.ok, allowed.content


def _api_views(patterns, prefix=""):
    """(url name, METHOD, view class) for every method every /api/v1/ view serves."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _api_views(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern) and (prefix + str(pattern.pattern)).startswith("api/v1/"):
            view = pattern.callback.view_class
            for method in view.http_method_names:
                if method not in ("options", "head") and hasattr(view, method):
                    yield pattern.name, method.upper(), view


def test_the_matrix_covers_every_api_endpoint_and_method():
    covered = {(endpoint.name, endpoint.method) for endpoint in ENDPOINTS}
    missing = {(name, method) for name, method, _ in _api_views(get_resolver().url_patterns)} - covered
    assert not missing, f"add these to ENDPOINTS in {__file__}: {sorted(missing)}"


def test_every_api_view_declares_the_token_scope_the_matrix_expects():
    for name, method, view in _api_views(get_resolver().url_patterns):
        expected = {e.scope for e in ENDPOINTS if e.name == name and e.method == method}
        assert getattr(view, "required_scopes", {}).get(method) in expected, (name, method, expected)


def test_members_post_is_gone_for_tokens_and_sessions_alike(world):
    """People join by invitation; POST /members/ answers 405, not a scope error, to every caller."""
    caller = MembershipFactory(organization=world.home, role=Role.OWNER)
    body = {"username": world.values["outsider"], "role": "viewer"}
    session = APIClient()
    session.force_authenticate(caller.user)
    for client in (_client_for(caller), _client_for(caller, scopes=["jobs:read"]), session):
        assert client.post("/api/v1/members/", body, format="json").status_code == 405
    assert not Membership.objects.filter(organization=world.home, user__username=world.values["outsider"]).exists()
