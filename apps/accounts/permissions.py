"""Who may do what, by role. One matrix; services ask it, views never decide themselves."""

from apps.accounts.models import Membership, Role

SUBMIT_JOBS = "jobs.submit"
MANAGE_ANY_JOB = "jobs.manage_any"  # cancel or retry someone else's job
READ_JOBS = "jobs.read"
READ_MODELS = "models.read"
UPLOAD_MODELS = "models.upload"
PROMOTE_MODELS = "models.promote"  # promote or archive a version
READ_AGENTS = "agents.read"  # agents, memories, search
MANAGE_AGENTS = "agents.manage"  # create agents, add and import memories

_ALL = set(Role.values)
PERMISSIONS: dict[str, set[str]] = {
    READ_JOBS: _ALL,
    SUBMIT_JOBS: {Role.OWNER, Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.SERVICE},
    MANAGE_ANY_JOB: {Role.OWNER, Role.ADMIN, Role.OPERATOR},
    READ_MODELS: _ALL,
    UPLOAD_MODELS: {Role.OWNER, Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.SERVICE},
    PROMOTE_MODELS: {Role.OWNER, Role.ADMIN, Role.OPERATOR},
    READ_AGENTS: _ALL,
    MANAGE_AGENTS: {Role.OWNER, Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.SERVICE},
}


def has_permission(membership: Membership | None, action: str) -> bool:
    return membership is not None and membership.role in PERMISSIONS[action]
