"""Members join an organization by accepting an invitation, never by being added directly (issue 17)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent, Invitation, Membership, Role
from apps.accounts.services import api_token_create
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def invite(client, username, role="developer"):
    return client.post("/api/v1/invitations/", {"username": username, "role": role}, format="json")


def token_client(membership, scopes=None) -> APIClient:
    client = APIClient()
    secret = api_token_create(membership=membership, name="t", scopes=scopes).plaintext
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


def test_members_post_no_longer_adds_a_user_of_another_organization(member, client):
    # Issue 17, finding 5: an admin could add anyone on the platform to their organization.
    admin, admin_client = member("admin")
    outsider = MembershipFactory(role=Role.VIEWER).user

    by_token = admin_client.post("/api/v1/members/", {"username": outsider.username, "role": "viewer"}, format="json")
    client.force_login(admin.user)
    by_session = client.post(
        "/api/v1/members/", {"username": outsider.username, "role": "viewer"}, content_type="application/json"
    )

    assert (by_token.status_code, by_session.status_code) == (405, 405), by_token.content
    assert not Membership.objects.filter(user=outsider, organization=admin.organization).exists()


def _shape(body: dict) -> dict:
    """An answer without what is expected to differ: its id, the name asked for and the times."""
    return {key: value for key, value in body.items() if key not in ("id", "username", "created_at", "expires_at")}


def test_inviting_answers_the_same_whether_or_not_the_username_exists_elsewhere(member):
    admin, client = member("admin")
    elsewhere = MembershipFactory(role=Role.OWNER).user.username
    inactive = UserFactory(is_active=False).username

    answers = [invite(client, name) for name in (elsewhere, "nobody-by-this-name", inactive)]

    assert [answer.status_code for answer in answers] == [201, 201, 201], answers[0].content
    assert _shape(answers[0].json()) == _shape(answers[1].json()) == _shape(answers[2].json())
    assert _shape(answers[0].json()) == {"role": "developer", "invited_by": admin.user.username, "status": "pending"}
    # The audit trail the inviting organization reads tells no more than the answer did.
    details = [set(event.details) for event in AuditEvent.objects.filter(action="member.invited").order_by("id")]
    assert details[0] == details[1] == details[2]
    # Nobody joined; asking again answers the same 409 for every name (the pending invitation is the org's own).
    assert not Membership.objects.filter(organization=admin.organization).exclude(pk=admin.pk).exists()
    again = [invite(client, name) for name in (elsewhere, "nobody-by-this-name")]
    assert [answer.status_code for answer in again] == [409, 409]
    assert again[0].json()["fields"].keys() == again[1].json()["fields"].keys() == {"username"}


def test_inviting_an_existing_member_of_your_organization_is_409(member):
    admin, client = member("admin")
    colleague = MembershipFactory(organization=admin.organization, role=Role.ANALYST)
    refused = invite(client, colleague.user.username)
    assert refused.status_code == 409 and "already a member" in refused.json()["detail"]
    assert refused.json()["fields"] == {"username": ["Already a member of this organization."]}


def test_the_addressee_accepts_and_becomes_a_member_with_an_audit_event(member):
    admin, admin_client = member("admin")
    invitee, invitee_client = member("viewer")  # a member elsewhere; its token has `*`
    invitation = invite(admin_client, invitee.user.username, role="developer").json()

    received = invitee_client.get("/api/v1/invitations/received")
    assert received.status_code == 200
    assert [(r["id"], r["organization"], r["role"], r["status"]) for r in received.json()["results"]] == [
        (invitation["id"], admin.organization.slug, "developer", "pending")
    ]
    accepted = invitee_client.post(f"/api/v1/invitations/{invitation['id']}/accept")

    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["status"] == "accepted"
    joined = Membership.objects.get(user=invitee.user, organization=admin.organization)
    assert joined.role == Role.DEVELOPER
    event = AuditEvent.objects.get(organization=admin.organization, action="member.added")
    assert event.actor == invitee.user and event.target_id == str(joined.pk)
    assert event.details["invited_by"] == admin.user.username and event.details["role"] == "developer"
    assert AuditEvent.objects.filter(organization=admin.organization, action="member.invited").count() == 1
    listed = admin_client.get("/api/v1/invitations/").json()["results"]
    assert [(i["username"], i["status"]) for i in listed] == [(invitee.user.username, "accepted")]
    again = invitee_client.post(f"/api/v1/invitations/{invitation['id']}/accept")
    assert again.status_code == 409 and "already accepted" in again.json()["detail"]


def test_a_user_in_no_organization_accepts_with_a_session_login(member, client):
    admin, admin_client = member("owner")
    newcomer = UserFactory()
    invitation = invite(admin_client, newcomer.username, role="owner").json()
    client.force_login(newcomer)

    assert [r["id"] for r in client.get("/api/v1/invitations/received").json()["results"]] == [invitation["id"]]
    assert client.post(f"/api/v1/invitations/{invitation['id']}/accept").status_code == 200
    assert Membership.objects.get(user=newcomer, organization=admin.organization).role == Role.OWNER
    assert client.get("/api/v1/me").json()["organization"] == admin.organization.slug


def test_only_the_addressee_may_accept_or_decline_anyone_else_gets_404(member):
    admin, admin_client = member("owner")
    addressee = UserFactory()
    invitation = invite(admin_client, addressee.username).json()
    _, stranger = member("owner")
    _, colleague = member("admin", organization=admin.organization)

    for client in (stranger, colleague, admin_client):
        for verb in ("accept", "decline"):
            response = client.post(f"/api/v1/invitations/{invitation['id']}/{verb}")
            assert response.status_code == 404, (verb, response.content)
            assert response.json()["detail"] == "No such invitation."
        assert client.get("/api/v1/invitations/received").json()["results"] == []
    assert Invitation.objects.get(pk=invitation["id"]).status == "pending"
    assert not Membership.objects.filter(user=addressee).exists()


def test_expired_or_revoked_invitations_are_refused_with_a_clear_message(member):
    admin, admin_client = member("admin")
    invitee, invitee_client = member("viewer")
    expired = invite(admin_client, invitee.user.username).json()
    Invitation.objects.filter(pk=expired["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    refused = invitee_client.post(f"/api/v1/invitations/{expired['id']}/accept")
    assert refused.status_code == 409 and "expired" in refused.json()["detail"]
    assert admin_client.get("/api/v1/invitations/").json()["results"][0]["status"] == "expired"

    # Inviting again after expiry renews the invitation; revoking it ends it for good.
    renewed = invite(admin_client, invitee.user.username, role="analyst")
    assert renewed.status_code == 201 and renewed.json()["role"] == "analyst"
    revoked = admin_client.post(f"/api/v1/invitations/{renewed.json()['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    refused = invitee_client.post(f"/api/v1/invitations/{renewed.json()['id']}/accept")
    assert refused.status_code == 409 and "revoked" in refused.json()["detail"]
    assert not Membership.objects.filter(user=invitee.user, organization=admin.organization).exists()
    assert AuditEvent.objects.filter(organization=admin.organization, action="invitation.revoked").count() == 1
    assert admin_client.post(f"/api/v1/invitations/{renewed.json()['id']}/revoke").status_code == 409


def test_declining_ends_the_invitation_and_is_audited(member):
    admin, admin_client = member("admin")
    invitee, invitee_client = member("viewer")
    invitation = invite(admin_client, invitee.user.username).json()

    declined = invitee_client.post(f"/api/v1/invitations/{invitation['id']}/decline")

    assert declined.status_code == 200 and declined.json()["status"] == "declined"
    event = AuditEvent.objects.get(organization=admin.organization, action="invitation.declined")
    assert event.actor == invitee.user and event.details["invited_by"] == admin.user.username
    assert invitee_client.post(f"/api/v1/invitations/{invitation['id']}/accept").status_code == 409
    assert not Membership.objects.filter(user=invitee.user, organization=admin.organization).exists()


def test_a_narrow_token_cannot_make_its_user_join_another_organization(member):
    admin, admin_client = member("admin")
    invitee = MembershipFactory(role=Role.OWNER)
    invitation = invite(admin_client, invitee.user.username).json()

    narrow = token_client(invitee, scopes=["jobs:read"])
    refused = narrow.post(f"/api/v1/invitations/{invitation['id']}/accept")
    assert refused.status_code == 403 and "invitations:write" in refused.json()["detail"]
    assert narrow.get("/api/v1/invitations/received").status_code == 403
    assert token_client(invitee, scopes=["read"]).get("/api/v1/invitations/received").status_code == 200
    assert not Membership.objects.filter(user=invitee.user, organization=admin.organization).exists()

    allowed = token_client(invitee, scopes=["invitations:write"]).post(f"/api/v1/invitations/{invitation['id']}/accept")
    assert allowed.status_code == 200


def test_role_rules_apply_to_invitations(member):
    admin, admin_client = member("admin")
    _, owner_client = member("owner", organization=admin.organization)
    refused = invite(admin_client, "future-owner", role="owner")
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    assert invite(owner_client, "future-owner", role="owner").status_code == 201
    bad = invite(owner_client, "someone", role="root")
    assert bad.status_code == 400 and "role" in bad.json()["fields"]


def test_an_invitation_whose_sender_lost_the_right_to_invite_cannot_be_accepted(member):
    owner, owner_client = member("owner")
    admin, admin_client = member("admin", organization=owner.organization)
    invitee, invitee_client = member("viewer")
    invitation = invite(admin_client, invitee.user.username, role="admin").json()
    assert owner_client.delete(f"/api/v1/members/{admin.user.username}").status_code == 204

    refused = invitee_client.post(f"/api/v1/invitations/{invitation['id']}/accept")

    assert refused.status_code == 409 and "no longer" in refused.json()["detail"]
    assert not Membership.objects.filter(user=invitee.user, organization=owner.organization).exists()


def test_an_organizations_invitations_are_invisible_to_others(member):
    _, admin_client = member("admin")
    invitation = invite(admin_client, "somebody").json()
    _, stranger = member("owner")
    assert stranger.get("/api/v1/invitations/").json()["results"] == []
    assert stranger.post(f"/api/v1/invitations/{invitation['id']}/revoke").status_code == 404
    assert Invitation.objects.get(pk=invitation["id"]).status == "pending"
