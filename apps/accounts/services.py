"""Writes for accounts: organizations, memberships and API tokens."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import ApiToken, Membership, Organization, Role, User
from apps.core.errors import Conflict, DomainError

TOKEN_PREFIX_BYTES = 6
TOKEN_SECRET_BYTES = 32


def hash_token_secret(secret: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is enough: there is nothing to
    # brute-force, and authentication stays cheap on every request.
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def organization_create(*, name: str, slug: str | None = None, owner: User | None = None) -> Organization:
    slug = slug or slugify(name)
    if not slug:
        raise DomainError("An organization needs a name.", fields={"name": ["This field may not be blank."]})
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"An organization with slug '{slug}' already exists.", fields={"slug": ["Already taken."]})
    organization = Organization.objects.create(name=name, slug=slug)
    if owner is not None:
        Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
    return organization


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
    *, membership: Membership, name: str, scopes: list[str] | None = None, expires_at: datetime | None = None
) -> IssuedToken:
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("The expiry must be in the future.", fields={"expires_at": ["Must be in the future."]})
    prefix = secrets.token_hex(TOKEN_PREFIX_BYTES)
    secret = secrets.token_urlsafe(TOKEN_SECRET_BYTES)
    token = ApiToken.objects.create(
        membership=membership,
        name=name,
        prefix=prefix,
        secret_hash=hash_token_secret(secret),
        scopes=scopes or ["*"],
        expires_at=expires_at,
    )
    return IssuedToken(token=token, plaintext=f"sy_{prefix}_{secret}")


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token
