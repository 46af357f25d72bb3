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
