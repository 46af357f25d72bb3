"""Reads for accounts."""

from apps.accounts.models import ApiToken, Membership, User


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
