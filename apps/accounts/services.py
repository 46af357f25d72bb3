"""Writes for accounts: organizations, users, memberships, invitations, API tokens, quotas and the audit trail."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import (
    ApiToken,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    OrganizationQuota,
    Role,
    User,
)
from apps.accounts.permissions import (
    MANAGE_ANY_TOKEN,
    MANAGE_MEMBERS,
    MANAGE_OWN_TOKENS,
    SCOPES,
    Actor,
    PlatformOperator,
    grantable_roles,
    has_permission,
    is_owner,
    require,
    scope_grants,
)
from apps.core.errors import Conflict, DomainError, NotFound, PermissionDenied

TOKEN_PREFIX_BYTES = 6
TOKEN_SECRET_BYTES = 32


def hash_token_secret(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is enough: there is nothing to
    # brute-force, and authentication stays cheap on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def organization_create(
    *, name: str, slug: str | None = None, owner: User | None = None, actor: User | None = None
) -> Organization:
    """Create a tenant, optionally with its first owner. `actor`: the superuser asking (None: the system)."""
    if actor is not None:
        _require_superuser(actor, "create organizations")
    name = (name or "").strip()
    slug = slug or slugify(name)
    if not name or not slug:
        raise DomainError("name: an organization needs a name.", fields={"name": ["This field may not be blank."]})
    try:
        validate_slug(slug)
    except ValidationError as exc:
        raise DomainError(f"slug: '{slug}' is not a slug.", fields={"slug": exc.messages}) from exc
    if len(slug) > 64 or len(name) > 200:
        raise DomainError("slug: at most 64 characters, name at most 200.", fields={"slug": ["At most 64 characters."]})
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"An organization with slug '{slug}' already exists.", fields={"slug": ["Already taken."]})
    if owner is not None and not owner.is_active:
        raise DomainError(f"owner: '{owner.get_username()}' is not active.", fields={"owner": ["Not active."]})
    organization = Organization.objects.create(name=name, slug=slug)
    if owner is not None:
        Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    audit_record(
        organization=organization,
        actor=actor,
        action="organization.created",
        target=organization,
        details={"slug": slug, "name": name, "owner": owner.get_username() if owner else None},
    )
    return organization


@transaction.atomic
def user_create(
    *,
    actor: User | None,
    username: str,
    email: str = "",
    password: str | None = None,
    is_staff: bool = False,
    is_superuser: bool = False,
) -> User:
    """Create a login. `password` None makes an account that only API tokens can use.

    The password passes Django's AUTH_PASSWORD_VALIDATORS; `actor` is the superuser asking
    (None: the system).
    """
    if actor is not None:
        _require_superuser(actor, "create users")
    username = (username or "").strip()
    user = User(username=username, email=(email or "").strip(), is_staff=is_staff, is_superuser=is_superuser)
    errors: dict[str, list[str]] = {}
    for field in ("username", "email"):
        try:
            user._meta.get_field(field).clean(getattr(user, field), user)
        except ValidationError as exc:
            errors[field] = exc.messages
    if "username" not in errors and User.objects.filter(username=username).exists():
        raise Conflict(f"A user '{username}' already exists.", fields={"username": ["Already taken."]})
    if password is not None:
        try:
            validate_password(password, user=user)
        except ValidationError as exc:
            errors["password"] = exc.messages
    if errors:
        first = next(iter(errors))
        raise DomainError(f"{first}: {errors[first][0]}", fields=errors)
    if password is None:
        user.set_unusable_password()
    else:
        user.set_password(password)
    user.save()
    audit_record(
        organization=None,
        actor=actor,
        action="user.created",
        target=user,
        details={
            "username": username,
            "email": user.email,
            "is_staff": is_staff,
            "is_superuser": is_superuser,
            "password": "set" if password is not None else "unusable",
        },
    )
    return user


def _require_superuser(actor: User, doing: str) -> None:
    if not (actor.is_active and actor.is_superuser):
        raise PermissionDenied(f"Only an active superuser may {doing}; '{actor.get_username()}' is not one.")


def membership_set(*, user: User, organization: Organization, role: str) -> Membership:
    if role not in Role.values:
        raise DomainError(f"Unknown role '{role}'.", fields={"role": [f"Choose one of {', '.join(Role.values)}."]})
    membership, _ = Membership.objects.update_or_create(user=user, organization=organization, defaults={"role": role})
    return membership


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown once; only its hash is stored


def api_token_create(
    *,
    membership: Membership,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    actor: Membership | None = None,
    creator_scopes: list[str] | None = None,
) -> IssuedToken:
    """Issue a token acting as `membership`; `actor` (default: that member) must be allowed to.

    `creator_scopes` are the scopes of the credential asking: a token's when a token creates
    a token, None for a session login or the command line (the full role). The new token's
    scopes are a non-empty subset of them; omitted, they are the creator's own.
    """
    actor = actor or membership
    _check_may_manage_tokens(actor, membership)
    name = (name or "").strip()
    if not name:
        raise DomainError("name: a token needs a name.", fields={"name": ["This field may not be blank."]})
    if len(name) > 100:
        raise DomainError("name: at most 100 characters.", fields={"name": ["At most 100 characters."]})
    scopes = _token_scopes(scopes, creator_scopes)
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("The expiry must be in the future.", fields={"expires_at": ["Must be in the future."]})
    prefix = secrets.token_hex(TOKEN_PREFIX_BYTES)
    secret = secrets.token_urlsafe(TOKEN_SECRET_BYTES)
    with transaction.atomic():
        token = ApiToken.objects.create(
            membership=membership,
            name=name,
            prefix=prefix,
            secret_hash=hash_token_secret(secret),
            scopes=scopes,
            expires_at=expires_at,
        )
        audit_record(
            organization=membership.organization_id,
            actor=actor,
            action="token.created",
            target=token,
            details={"name": name, "prefix": prefix, "for": membership.user.get_username(), "scopes": scopes},
        )
    return IssuedToken(token=token, plaintext=f"sy_{prefix}_{secret}")


def _token_scopes(requested: list[str] | None, creator_scopes: list[str] | None) -> list[str]:
    """The scopes a new token gets: never empty, never unknown, never wider than its creator's."""
    if requested is None:
        requested = list(creator_scopes) if creator_scopes is not None else ["*"]
    scopes = list(dict.fromkeys(requested))
    if not scopes:
        # An empty list once meant "default", which was `*`: a `tokens:write` token could mint
        # a token with every scope. A token with no scope is useless, so it is refused.
        raise DomainError(
            "scopes: a token needs at least one scope.",
            fields={"scopes": [f"Give at least one scope, e.g. one of: {', '.join(SCOPES)}."]},
        )
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown:
        raise DomainError(
            f"scopes: unknown scope '{unknown[0]}'.",
            fields={"scopes": [f"Unknown scope '{scope}'. Choose from: {', '.join(SCOPES)}." for scope in unknown]},
        )
    if creator_scopes is not None:
        # Otherwise `tokens:write` alone would be a way to every other scope.
        wider = [scope for scope in scopes if not scope_grants(creator_scopes, scope)]
        if wider:
            raise PermissionDenied(
                f"This token cannot create a token with scope '{wider[0]}' that it does not have itself.",
                fields={"scopes": [f"'{scope}' is wider than the calling token's scopes." for scope in wider]},
            )
    return scopes


def api_token_revoke(*, token: ApiToken, actor: Actor | None = None) -> ApiToken:
    actor = actor or token.membership
    _check_may_manage_tokens(actor, token.membership)
    if token.revoked_at is None:
        with transaction.atomic():
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_record(
                organization=token.membership.organization_id,
                actor=actor,
                action="token.revoked",
                target=token,
                details={"name": token.name, "prefix": token.prefix, "for": token.membership.user.get_username()},
            )
    return token


def _check_may_manage_tokens(actor: Actor, owner: Membership) -> None:
    if actor.organization_id != owner.organization_id:
        raise NotFound("No such token.")
    if actor.pk == owner.pk:
        require(actor, MANAGE_OWN_TOKENS, "manage API tokens")
    elif not has_permission(actor, MANAGE_ANY_TOKEN):
        raise PermissionDenied(
            f"Role '{actor.role}' may manage only its own API tokens.", details={"action": MANAGE_ANY_TOKEN}
        )


# --- members -----------------------------------------------------------------------------


def member_set_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    require(actor, MANAGE_MEMBERS, "manage members")
    if membership.organization_id != actor.organization_id:
        raise NotFound("No such member.")
    _check_role(actor, role)
    if membership.role == Role.OWNER and not is_owner(actor):
        raise PermissionDenied("Only an owner may change an owner's role.")
    with transaction.atomic():
        locked = Membership.objects.select_for_update().get(pk=membership.pk)
        previous = locked.role
        if previous == role:
            return locked
        if previous == Role.OWNER:
            _keep_an_owner(locked)
        locked.role = role
        locked.save(update_fields=["role"])
        audit_record(
            organization=actor.organization_id,
            actor=actor,
            action="member.role_changed",
            target=locked,
            details={"username": locked.user.get_username(), "from": previous, "to": role},
        )
    return locked


def member_remove(*, actor: Actor, membership: Membership) -> None:
    require(actor, MANAGE_MEMBERS, "manage members")
    if membership.organization_id != actor.organization_id:
        raise NotFound("No such member.")
    if membership.role == Role.OWNER and not is_owner(actor):
        raise PermissionDenied("Only an owner may remove an owner.")
    with transaction.atomic():
        locked = Membership.objects.select_for_update().get(pk=membership.pk)
        if locked.role == Role.OWNER:
            _keep_an_owner(locked)
        audit_record(
            organization=actor.organization_id,
            actor=actor,
            action="member.removed",
            target=locked,
            details={"username": locked.user.get_username(), "role": locked.role},
        )
        # Its tokens go with it (cascade): a removed member's credentials stop working at once.
        locked.delete()


def _check_role(actor: Actor, role: str) -> None:
    if role not in Role.values:
        raise DomainError(
            f"role: unknown role '{role}'.", fields={"role": [f"Choose one of {', '.join(Role.values)}."]}
        )
    if role not in grantable_roles(actor):
        raise PermissionDenied(
            "Only an owner may make someone an owner."
            if role == Role.OWNER
            else f"Role '{actor.role}' may not grant the role '{role}'.",
            fields={"role": ["Above your own role."]},
        )


def _keep_an_owner(owner: Membership) -> None:
    others = (
        Membership.objects.select_for_update()
        .filter(organization_id=owner.organization_id, role=Role.OWNER)
        .exclude(pk=owner.pk)
    )
    if not others.exists():
        raise Conflict("An organization keeps at least one owner; make someone else owner first.")


# --- invitations -------------------------------------------------------------------------
#
# Nobody is added to an organization without saying yes: a member with `members.manage`
# invites a *username*, and the user of that name accepts (or declines). Creating an
# invitation never looks the username up, so its answer is the same whether such a user
# exists, belongs to another organization or does not exist at all; only a member of the
# inviter's own organization is refused (409), which tells nothing beyond it.


def invitation_create(*, actor: Actor, username: str, role: str) -> Invitation:
    """Invite `username` to the actor's organization with `role`; expires after INVITATION_TTL_DAYS."""
    require(actor, MANAGE_MEMBERS, "invite members")
    _check_role(actor, role)
    username = (username or "").strip()
    if not username or len(username) > 150:
        raise DomainError(
            "username: give the username to invite (at most 150 characters).",
            fields={"username": ["Give a username of at most 150 characters."]},
        )
    if Membership.objects.filter(organization_id=actor.organization_id, user__username=username).exists():
        raise Conflict(
            f"'{username}' is already a member of this organization.",
            fields={"username": ["Already a member of this organization."]},
        )
    now = timezone.now()
    expires_at = now + timedelta(days=settings.INVITATION_TTL_DAYS)
    with transaction.atomic():
        invitation = (
            Invitation.objects.select_for_update()
            .filter(organization_id=actor.organization_id, username=username)
            .filter(accepted_at__isnull=True, declined_at__isnull=True, revoked_at__isnull=True)
            .first()
        )
        if invitation is not None and invitation.expires_at > now:
            raise _already_invited(username)
        if invitation is not None:
            # Expired and never answered: invite again by renewing it (one open row per name).
            invitation.role, invitation.invited_by, invitation.created_at = role, actor.user, now
            invitation.expires_at = expires_at
            invitation.save(update_fields=["role", "invited_by", "created_at", "expires_at"])
        else:
            try:
                with transaction.atomic():
                    invitation = Invitation.objects.create(
                        organization_id=actor.organization_id,
                        username=username,
                        role=role,
                        invited_by=actor.user,
                        created_at=now,
                        expires_at=expires_at,
                    )
            except IntegrityError as exc:  # a concurrent invitation of the same name won
                raise _already_invited(username) from exc
        audit_record(
            organization=actor.organization_id,
            actor=actor,
            action="member.invited",
            target=invitation,
            details={"username": username, "role": role, "expires_at": expires_at.isoformat()},
        )
    return invitation


def _already_invited(username: str) -> Conflict:
    return Conflict(
        f"'{username}' already has a pending invitation; revoke it to invite again with another role.",
        fields={"username": ["Already invited."]},
    )


def invitation_revoke(*, actor: Actor, invitation: Invitation) -> Invitation:
    if invitation.organization_id != actor.organization_id:
        raise NotFound("No such invitation.")
    require(actor, MANAGE_MEMBERS, "revoke invitations")
    with transaction.atomic():
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if not locked.is_open:
            raise Conflict(f"This invitation was already {locked.status}; there is nothing to revoke.")
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        audit_record(
            organization=actor.organization_id,
            actor=actor,
            action="invitation.revoked",
            target=locked,
            details={"username": locked.username, "role": locked.role},
        )
    return locked


def invitation_accept(*, user: User, invitation: Invitation) -> Invitation:
    """The addressee joins the organization with the invitation's role (a new Membership)."""
    with transaction.atomic():
        locked = _lock_answerable(user, invitation)
        inviter = (
            Membership.objects.select_related("user")
            .filter(organization_id=locked.organization_id, user_id=locked.invited_by_id, user__is_active=True)
            .first()
        )
        # The invitation carries its sender's authority, so it lapses with it: a removed or
        # demoted admin's invitations cannot be used to join after the fact.
        if (
            inviter is None
            or not has_permission(inviter, MANAGE_MEMBERS)
            or (locked.role == Role.OWNER and inviter.role != Role.OWNER)
        ):
            raise Conflict(
                "The member who sent this invitation may no longer invite with this role; "
                "ask the organization for a new invitation."
            )
        try:
            with transaction.atomic():
                membership = Membership.objects.create(
                    user=user, organization_id=locked.organization_id, role=locked.role
                )
        except IntegrityError as exc:
            raise Conflict(f"You are already a member of '{locked.organization.slug}'.") from exc
        locked.accepted_at = timezone.now()
        locked.save(update_fields=["accepted_at"])
        audit_record(
            organization=locked.organization_id,
            actor=user,
            action="member.added",
            target=membership,
            details={
                "username": user.get_username(),
                "role": locked.role,
                "invited_by": inviter.user.get_username(),
                "invitation": str(locked.pk),
            },
        )
    return locked


def invitation_decline(*, user: User, invitation: Invitation) -> Invitation:
    with transaction.atomic():
        locked = _lock_answerable(user, invitation)
        locked.declined_at = timezone.now()
        locked.save(update_fields=["declined_at"])
        audit_record(
            organization=locked.organization_id,
            actor=user,
            action="invitation.declined",
            target=locked,
            details={
                "username": user.get_username(),
                "role": locked.role,
                "invited_by": locked.invited_by.get_username() if locked.invited_by else None,
            },
        )
    return locked


def _lock_answerable(user: User, invitation: Invitation) -> Invitation:
    """The invitation, locked, if `user` is its addressee and it is still pending; else why not."""
    locked = (
        Invitation.objects.select_for_update(of=("self",))
        .select_related("organization", "invited_by")
        .filter(pk=invitation.pk, username=user.get_username())
        .first()
    )
    if locked is None:
        # Someone else's invitation is as invisible as one that does not exist.
        raise NotFound("No such invitation.")
    status = locked.status
    if status == Invitation.Status.EXPIRED:
        raise Conflict(
            f"This invitation expired at {locked.expires_at:%Y-%m-%d %H:%M} UTC; "
            f"ask '{locked.organization.slug}' for a new one."
        )
    if status == Invitation.Status.REVOKED:
        raise Conflict(f"This invitation was revoked by '{locked.organization.slug}'.")
    if status != Invitation.Status.PENDING:
        raise Conflict(f"This invitation was already {status}.")
    return locked


# --- quotas ------------------------------------------------------------------------------


QUOTA_FIELDS = (
    "concurrent_jobs",
    "running_jobs",
    "starts_per_minute",
    "share_weight",
    "sandbox_limits",
    "gpu_seconds_per_day",
    "job_retention_days",
)


def organization_quota_errors(values: dict) -> dict[str, list[str]]:
    """Field errors for quota values (shared by the service and the admin form)."""
    from apps.jobs.kinds import all_kinds
    from workers.sandbox.runner import SYSTEM_MAXIMUM

    errors: dict[str, list[str]] = {name: ["Not a quota."] for name in sorted(set(values) - set(QUOTA_FIELDS))}
    concurrent = values.get("concurrent_jobs") or {}
    if not isinstance(concurrent, dict):
        errors["concurrent_jobs"] = ["Must be an object: job kind -> limit."]
        concurrent = {}
    for kind, limit in concurrent.items():
        if kind not in all_kinds():
            errors[f"concurrent_jobs.{kind}"] = ["Not a job kind."]
        elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            errors[f"concurrent_jobs.{kind}"] = ["Must be a whole number >= 0."]
    running = values.get("running_jobs") or {}
    if not isinstance(running, dict):
        errors["running_jobs"] = ["Must be an object: queue -> most jobs running at once."]
        running = {}
    for queue, limit in running.items():
        if queue not in ("cpu", "gpu"):
            errors[f"running_jobs.{queue}"] = ["Not a queue whose jobs are claimed; choose cpu or gpu."]
        elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            errors[f"running_jobs.{queue}"] = ["Must be a whole number >= 1 (remove it for no limit)."]
    starts = values.get("starts_per_minute") or {}
    if not isinstance(starts, dict):
        errors["starts_per_minute"] = ["Must be an object: job kind -> most jobs started in any minute."]
        starts = {}
    for kind, limit in starts.items():
        if kind not in all_kinds():
            errors[f"starts_per_minute.{kind}"] = ["Not a job kind."]
        elif not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
            errors[f"starts_per_minute.{kind}"] = ["Must be a whole number from 1 to 100000 (remove it for no limit)."]
    weight = values.get("share_weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 < weight <= 1000:
        errors["share_weight"] = ["Must be a number > 0 and at most 1000 (1 is everyone's default)."]
    caps = values.get("sandbox_limits") or {}
    if not isinstance(caps, dict):
        errors["sandbox_limits"] = ["Must be an object: limit name -> cap."]
        caps = {}
    for name, cap in caps.items():
        if name not in SYSTEM_MAXIMUM:
            errors[f"sandbox_limits.{name}"] = [f"Not a sandbox limit; choose from {', '.join(SYSTEM_MAXIMUM)}."]
        elif not isinstance(cap, int | float) or isinstance(cap, bool) or not 0 < cap <= SYSTEM_MAXIMUM[name]:
            errors[f"sandbox_limits.{name}"] = [f"Must be > 0 and at most the system maximum {SYSTEM_MAXIMUM[name]}."]
    seconds = values.get("gpu_seconds_per_day")
    if seconds is not None and (not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0):
        errors["gpu_seconds_per_day"] = ["Must be a whole number >= 0, or null for unlimited."]
    days = values.get("job_retention_days")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
        errors["job_retention_days"] = ["Must be 1-3650 days, or null for JOBS_RETENTION_DAYS."]
    return errors


def organization_quota_set(*, organization: Organization, actor: User | None, **values) -> OrganizationQuota:
    """Set an organization's quota (platform staff only: the admin and `manage.py quotas`)."""
    from apps.jobs.quotas import forget_quota

    errors = organization_quota_errors(values)
    if errors:
        first = next(iter(errors))
        raise DomainError(f"{first}: {errors[first][0]}", fields=errors)
    allowed = QUOTA_FIELDS
    with transaction.atomic():
        quota, _ = OrganizationQuota.objects.select_for_update().get_or_create(organization=organization)
        before = {name: getattr(quota, name) for name in allowed}
        for name, value in values.items():
            setattr(quota, name, value)
        quota.save()
        forget_quota(organization.pk)
        transaction.on_commit(partial(forget_quota, organization.pk))
        audit_record(
            organization=organization.pk,
            actor=actor,
            action="quota.changed",
            target=quota,
            details={"before": before, "after": {name: getattr(quota, name) for name in allowed}},
        )
    return quota


# --- audit trail -------------------------------------------------------------------------


def audit_record(
    *,
    organization: Organization | int | None,
    actor: User | Actor | None,
    action: str,
    target,
    details: dict | None = None,
) -> AuditEvent:
    """Record a security-relevant action; call it inside the transaction of the action itself.

    `actor` is the user, or what acted (a membership, or the platform operator: recorded as
    the superuser with `via: platform operator`).
    """
    organization_id = organization.pk if isinstance(organization, Organization) else organization
    details = dict(details or {})
    if isinstance(actor, PlatformOperator):
        details["via"] = "platform operator"
    if isinstance(actor, PlatformOperator | Membership):
        actor = actor.user
    return AuditEvent.objects.create(
        organization_id=organization_id,
        actor=actor,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        details=details,
    )
