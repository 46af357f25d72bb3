"""`Authorization: Token sy_...` (or `Bearer sy_...`) for the REST API."""

import hmac
from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from apps.accounts import throttling
from apps.accounts.models import ApiToken
from apps.accounts.services import hash_token_secret

# Writing last_used_at on every request would turn each read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in self.keywords:
            return None
        # Guessing is throttled per client address (REMOTE_ADDR: X-Forwarded-For is the client's
        # own claim). Over the limit nothing is checked, so a right guess is refused like a wrong one.
        address = request.META.get("REMOTE_ADDR", "")
        throttling.auth_failures_check(address)
        try:
            return self._authenticate_header(header)
        except exceptions.AuthenticationFailed:
            throttling.auth_failure_record(address)
            raise

    def _authenticate_header(self, header: list[bytes]):
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: expected 'Token <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Invalid token.") from exc
        return self._authenticate_token(raw)

    def _authenticate_token(self, raw: str):
        parts = raw.split("_", 2)
        if len(parts) != 3 or parts[0] != "sy":
            raise exceptions.AuthenticationFailed("Invalid token.")
        _, prefix, secret = parts
        token = (
            ApiToken.objects.select_related("membership__user", "membership__organization")
            .filter(prefix=prefix)
            .first()
        )
        if token is None or not hmac.compare_digest(token.secret_hash, hash_token_secret(secret)):
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("Token revoked.")
        now = timezone.now()
        if token.expires_at is not None and token.expires_at <= now:
            raise exceptions.AuthenticationFailed("Token expired.")
        user = token.membership.user
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive.")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return user, token

    def authenticate_header(self, request):
        return "Token"
