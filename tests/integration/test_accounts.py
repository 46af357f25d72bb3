from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import ApiToken, Role, User
from apps.accounts.services import api_token_create, api_token_revoke
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_the_user_model_is_the_custom_one(django_user_model):
    assert django_user_model._meta.label == "accounts.User"


def test_token_authenticates_as_its_membership(client):
    membership = MembershipFactory(role=Role.OPERATOR)
    issued = api_token_create(membership=membership, name="ci")

    for keyword in ("Token", "Bearer"):
        response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"{keyword} {issued.plaintext}")
        assert response.status_code == 200, response.content
        assert response.json() == {
            "username": membership.user.username,
            "organization": membership.organization.slug,
            "role": "operator",
            "auth": "token",
            "scopes": ["*"],
        }


def test_token_secret_is_stored_only_as_a_hash():
    issued = api_token_create(membership=MembershipFactory(), name="ci")
    secret = issued.plaintext.split("_", 2)[2]
    row = ApiToken.objects.get(pk=issued.token.pk)
    assert secret not in row.secret_hash and issued.plaintext.startswith(f"sy_{row.prefix}_")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda issued: api_token_revoke(token=issued.token), "Token revoked."),
        (
            lambda issued: ApiToken.objects.filter(pk=issued.token.pk).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            ),
            "Token expired.",
        ),
    ],
    ids=["revoked", "expired"],
)
def test_revoked_or_expired_token_is_refused(client, spoil, message):
    issued = api_token_create(membership=MembershipFactory(), name="ci")
    spoil(issued)
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {issued.plaintext}")
    assert response.status_code == 401
    assert response.json() == {"detail": message, "code": "authentication_failed", "fields": {}}


def test_wrong_secret_for_a_real_prefix_is_refused(client):
    issued = api_token_create(membership=MembershipFactory(), name="ci")
    forged = issued.plaintext[:-4] + "AAAA"
    response = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {forged}")
    assert response.status_code == 401


def test_anonymous_request_is_refused_with_the_error_shape(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_session_login_works_alongside_tokens(client):
    membership = MembershipFactory(role=Role.VIEWER)
    client.force_login(membership.user)
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["auth"] == "session"
    assert response.json()["organization"] == membership.organization.slug


def test_requests_over_the_rate_limit_get_429_with_retry_after(client, monkeypatch):
    from apps.accounts.throttling import TokenRateThrottle

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"api": "3/minute"})
    first = api_token_create(membership=MembershipFactory(), name="a").plaintext
    second = api_token_create(membership=MembershipFactory(), name="b").plaintext
    codes = [client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {first}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {first}")
    assert 0 < int(refused["Retry-After"]) <= 60
    assert refused.json()["code"] == "throttled"
    # Budgets are per token.
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Token {second}").status_code == 200


def test_seed_demo_is_repeatable_and_installs_the_embedding_model(monkeypatch, settings, tmp_path):
    from django.core.management import call_command

    from apps.registry.models import ModelVersion

    settings.MEDIA_ROOT = str(tmp_path)
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "a long demo password")
    call_command("seed_demo", quiet=True)
    call_command("seed_demo", quiet=True)

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("a long demo password")
    versions = ModelVersion.objects.filter(model__organization__slug="demo", model__task="embedding")
    assert [(v.number, v.stage) for v in versions] == [(1, "production")]


def test_users_and_organizations_are_created_by_active_superusers_only_and_audited():
    from apps.accounts.models import AuditEvent, Membership
    from apps.accounts.services import organization_create, user_create
    from apps.core.errors import DomainError, PermissionDenied
    from tests.factories import UserFactory

    root, plain = UserFactory(is_superuser=True), UserFactory()
    retired = UserFactory(is_superuser=True, is_active=False)
    for actor in (plain, retired):
        with pytest.raises(PermissionDenied):
            user_create(actor=actor, username="x", password=None)
        with pytest.raises(PermissionDenied):
            organization_create(name="X", actor=actor)

    with pytest.raises(DomainError) as bad:
        user_create(actor=root, username="no spaces!", email="not-an-email", password="short")
    assert set(bad.value.fields) == {"username", "email", "password"}
    service = user_create(actor=root, username="svc", password=None)  # a token-only account
    assert not service.has_usable_password()
    with pytest.raises(DomainError) as bad_slug:
        organization_create(name="Acme", slug="not a slug", actor=root)
    assert "slug" in bad_slug.value.fields

    organization = organization_create(name="Acme", slug="acme", owner=service, actor=root)

    assert Membership.objects.get(organization=organization).role == Role.OWNER
    created = AuditEvent.objects.get(action="organization.created")
    assert created.actor == root and created.details == {"slug": "acme", "name": "Acme", "owner": "svc"}
    assert AuditEvent.objects.get(action="user.created").details["password"] == "unusable"
