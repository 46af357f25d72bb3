"""Reads for accounts."""

from apps.accounts.models import ApiToken, Invitation, Membership, User


def membership_for_request(*, user: User, auth) -> Membership | None:
    """The membership a request acts as: the token's, or the user's only/first one."""
    if isinstance(auth, ApiToken):
        return auth.membership
    return Membership.objects.select_related("organization").filter(user=user).order_by("created_at").first()


def request_membership(request) -> Membership:
    """The membership an API request acts as; a user with no organization may do nothing."""
    from apps.core.errors import PermissionDenied
    from apps.core.logs import bind_log_context

    membership = membership_for_request(user=request.user, auth=request.auth)
    if membership is None:
        raise PermissionDenied("Your account belongs to no organization.")
    # What this request logs from here on names the organization it acts for.
    bind_log_context(organization_id=membership.organization_id, user_id=request.user.pk)
    return membership


def member_list(*, membership: Membership):
    from apps.accounts.permissions import READ_MEMBERS, require

    require(membership, READ_MEMBERS, "list members")
    return (
        Membership.objects.select_related("user")
        .filter(organization_id=membership.organization_id)
        .order_by("user__username")
    )


def member_get(*, membership: Membership, username: str) -> Membership:
    from apps.core.errors import NotFound

    found = (
        Membership.objects.select_related("user", "organization")
        .filter(organization_id=membership.organization_id, user__username=username)
        .first()
    )
    if found is None:
        raise NotFound("No such member.")
    return found


def token_list(*, membership: Membership):
    """The caller's own tokens; every member's for roles that manage any token."""
    from apps.accounts.permissions import MANAGE_ANY_TOKEN, has_permission

    tokens = ApiToken.objects.select_related("membership__user").filter(
        membership__organization_id=membership.organization_id
    )
    if not has_permission(membership, MANAGE_ANY_TOKEN):
        tokens = tokens.filter(membership=membership)
    return tokens.order_by("-created_at")


def token_get(*, membership: Membership, prefix: str) -> ApiToken:
    from apps.core.errors import NotFound

    token = token_list(membership=membership).filter(prefix=prefix).first()
    if token is None:
        raise NotFound("No such token.")
    return token


def audit_list(*, membership: Membership):
    from apps.accounts.models import AuditEvent
    from apps.accounts.permissions import READ_AUDIT, require

    require(membership, READ_AUDIT, "read the audit trail")
    return AuditEvent.objects.select_related("actor").filter(organization_id=membership.organization_id)


def invitation_list(*, membership: Membership):
    """The organization's invitations, newest first (roles that may read members)."""
    from apps.accounts.permissions import READ_MEMBERS, require

    require(membership, READ_MEMBERS, "list invitations")
    return Invitation.objects.select_related("invited_by").filter(organization_id=membership.organization_id)


def invitation_get(*, membership: Membership, invitation_id) -> Invitation:
    """One of the organization's invitations; another organization's is 404 like a missing one."""
    from apps.core.errors import NotFound

    invitation = (
        Invitation.objects.select_related("invited_by", "organization")
        .filter(organization_id=membership.organization_id, pk=invitation_id)
        .first()
    )
    if invitation is None:
        raise NotFound("No such invitation.")
    return invitation


def invitation_received_list(*, user: User):
    """Invitations addressed to the user's name, from any organization, newest first."""

    return Invitation.objects.select_related("organization", "invited_by").filter(username=user.get_username())


def invitation_received_get(*, user: User, invitation_id) -> Invitation:
    """An invitation addressed to the user; anyone else's is 404 like a missing one."""
    from apps.core.errors import NotFound

    invitation = invitation_received_list(user=user).filter(pk=invitation_id).first()
    if invitation is None:
        raise NotFound("No such invitation.")
    return invitation
