"""Who may do what, by role, and which token scope each action needs. One matrix.

Services ask `has_permission` (or `require`); views never decide themselves. The tables
here are the source of truth for docs/permissions.md (a test keeps the two equal).
"""

from dataclasses import dataclass

from apps.accounts.models import Membership, Organization, Role, User
from apps.core.errors import PermissionDenied

READ_JOBS = "jobs.read"
SUBMIT_JOBS = "jobs.submit"  # the kind decides further: see SUBMIT_BY_KIND
MANAGE_ANY_JOB = "jobs.manage_any"  # cancel or retry someone else's job
READ_SCHEDULES = "schedules.read"
# Create a schedule, and change or delete your own; it submits its jobs as you (so the kind
# must be one you may submit, checked again at every firing).
MANAGE_SCHEDULES = "schedules.manage"
MANAGE_ANY_SCHEDULE = "schedules.manage_any"  # change, pause or delete someone else's schedule
READ_MODELS = "models.read"
UPLOAD_MODELS = "models.upload"
PROMOTE_MODELS = "models.promote"  # promote or archive a version
OVERRIDE_PROMOTION = "models.promote_override"  # promote despite a failing report, with a reason
ROLLBACK_MODELS = "models.rollback"  # promote an archived version again
COMPILE_MODELS = "models.compile"
READ_AGENTS = "agents.read"
MANAGE_AGENTS = "agents.manage"  # create, change, import memories
READ_SCENARIOS = "scenarios.read"
MANAGE_SCENARIOS = "scenarios.manage"
READ_MEMBERS = "members.read"
# Invite (and revoke invitations), change role, remove; only owners grant or take `owner`.
MANAGE_MEMBERS = "members.manage"
MANAGE_OWN_TOKENS = "tokens.manage_own"
MANAGE_ANY_TOKEN = "tokens.manage_any"  # noqa: S105 (an action name); list and revoke other members' tokens
READ_AUDIT = "audit.read"
READ_QUOTAS = "quotas.read"
# Invitations addressed to the caller's own user, from any organization. They act for the
# user, not in the membership's organization, so every role may (and a session login with
# no organization yet); a token needs the `invitations:*` scope, which a narrow token lacks.
READ_INVITATIONS = "invitations.read"
RESPOND_TO_INVITATIONS = "invitations.respond"  # accept (join that organization) or decline

OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, VIEWER, SERVICE = Role.values
_ALL = frozenset(Role.values)

PERMISSIONS: dict[str, frozenset[str]] = {
    READ_JOBS: _ALL,
    SUBMIT_JOBS: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, SERVICE}),
    MANAGE_ANY_JOB: frozenset({OWNER, ADMIN, OPERATOR}),
    READ_SCHEDULES: _ALL,
    MANAGE_SCHEDULES: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, SERVICE}),
    MANAGE_ANY_SCHEDULE: frozenset({OWNER, ADMIN, OPERATOR}),
    READ_MODELS: _ALL,
    UPLOAD_MODELS: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
    PROMOTE_MODELS: frozenset({OWNER, ADMIN, OPERATOR}),
    OVERRIDE_PROMOTION: frozenset({OWNER, ADMIN}),
    ROLLBACK_MODELS: frozenset({OWNER, ADMIN}),
    COMPILE_MODELS: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
    READ_AGENTS: _ALL,
    MANAGE_AGENTS: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
    READ_SCENARIOS: _ALL,
    MANAGE_SCENARIOS: frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST}),
    READ_MEMBERS: frozenset({OWNER, ADMIN, OPERATOR}),
    MANAGE_MEMBERS: frozenset({OWNER, ADMIN}),
    MANAGE_OWN_TOKENS: _ALL,
    MANAGE_ANY_TOKEN: frozenset({OWNER, ADMIN}),
    READ_AUDIT: frozenset({OWNER, ADMIN}),
    READ_QUOTAS: _ALL,
    READ_INVITATIONS: _ALL,
    RESPOND_TO_INVITATIONS: _ALL,
}

# Who may submit each job kind (on top of SUBMIT_JOBS). A kind not listed here is open to
# every role with SUBMIT_JOBS except analysts, who run only what is listed for them.
_SUBMITTERS = frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE})
SUBMIT_BY_KIND: dict[str, frozenset[str]] = {
    "sleep": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
    "inference": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, SERVICE}),
    # Untrusted code: people only, so a leaked service token cannot run programs.
    "sandbox": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER}),
    "compile": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
    "simulation": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, SERVICE}),
    "simulation_sweep": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, ANALYST, SERVICE}),
    # Imports write memories: the same roles as agents.manage.
    "memory_import": frozenset({OWNER, ADMIN, OPERATOR, DEVELOPER, SERVICE}),
}

# A token carries scopes; each action needs one. `*` grants all, `read` every `:read`.
SCOPE_BY_ACTION: dict[str, str] = {
    READ_JOBS: "jobs:read",
    SUBMIT_JOBS: "jobs:write",
    MANAGE_ANY_JOB: "jobs:write",
    READ_SCHEDULES: "jobs:read",
    MANAGE_SCHEDULES: "jobs:write",
    MANAGE_ANY_SCHEDULE: "jobs:write",
    READ_MODELS: "models:read",
    UPLOAD_MODELS: "models:write",
    PROMOTE_MODELS: "models:write",
    OVERRIDE_PROMOTION: "models:write",
    ROLLBACK_MODELS: "models:write",
    COMPILE_MODELS: "models:write",
    READ_AGENTS: "agents:read",
    MANAGE_AGENTS: "agents:write",
    READ_SCENARIOS: "scenarios:read",
    MANAGE_SCENARIOS: "scenarios:write",
    READ_MEMBERS: "members:read",
    MANAGE_MEMBERS: "members:write",
    MANAGE_OWN_TOKENS: "tokens:write",
    MANAGE_ANY_TOKEN: "tokens:write",
    READ_AUDIT: "audit:read",
    READ_QUOTAS: "jobs:read",
    READ_INVITATIONS: "invitations:read",
    RESPOND_TO_INVITATIONS: "invitations:write",
}
_AREAS = sorted({scope.partition(":")[0] for scope in SCOPE_BY_ACTION.values()})
SCOPES: tuple[str, ...] = ("*", "read", *(f"{area}:{level}" for area in _AREAS for level in ("read", "write")))


def scope_grants(scopes, needed: str) -> bool:
    """Whether a token's scopes cover `needed` (`jobs:read` is also covered by `jobs:write`)."""
    area, _, level = needed.partition(":")
    return "*" in scopes or needed in scopes or (level == "read" and ("read" in scopes or f"{area}:write" in scopes))


@dataclass(frozen=True)
class PlatformOperator:
    """A superuser acting on one organization's objects (the admin's operator path), not a member of it.

    It stands where services take the acting Membership: it may do everything a role may,
    holds no role in the organization, is never saved, and what it does is audited under the
    superuser's name with `via: platform operator` (services.audit_record).
    """

    user: User
    organization: Organization
    role = "platform operator"
    pk = None  # not a membership: never equal to one

    @property
    def user_id(self) -> int:
        return self.user.pk

    @property
    def organization_id(self) -> int:
        return self.organization.pk


# What services accept as "who is acting": a member, or the platform operator.
Actor = Membership | PlatformOperator


def has_permission(membership: Actor | None, action: str) -> bool:
    if isinstance(membership, PlatformOperator):
        return True
    return membership is not None and membership.role in PERMISSIONS[action]


def may_submit_kind(membership: Actor, kind: str) -> bool:
    if isinstance(membership, PlatformOperator):
        return True
    if not has_permission(membership, SUBMIT_JOBS):
        return False
    return membership.role in SUBMIT_BY_KIND.get(kind, _SUBMITTERS)


# Roles ranked for "never grant a role above your own". `service` (a machine account) ranks
# with developer: it submits and uploads, it manages nobody.
ROLE_RANK: dict[str, int] = {
    OWNER: 6,
    ADMIN: 5,
    OPERATOR: 4,
    DEVELOPER: 3,
    SERVICE: 3,
    ANALYST: 2,
    VIEWER: 1,
}


def grantable_roles(actor: Actor) -> list[str]:
    """The roles `actor` may give someone in its organization: none above its own (owners grant all)."""
    if isinstance(actor, PlatformOperator):
        return list(Role.values)
    if not has_permission(actor, MANAGE_MEMBERS):
        return []
    return [role for role in Role.values if ROLE_RANK[role] <= ROLE_RANK[actor.role]]


def is_owner(actor: Actor) -> bool:
    """Owners (and the platform operator) may grant, change and remove the owner role."""
    return isinstance(actor, PlatformOperator) or actor.role == OWNER


def require(membership: Membership, action: str, doing: str) -> None:
    """Refuse with one message shape: "Role 'viewer' may not <doing>."."""
    if not has_permission(membership, action):
        raise PermissionDenied(f"Role '{membership.role}' may not {doing}.", details={"action": action})
