"""Domain errors: each carries a stable `code` that clients can rely on."""


class DomainError(Exception):
    """Something the caller asked for cannot be done; the message says why."""

    code = "invalid"
    status_code = 400

    def __init__(self, message: str | None = None, *, fields: dict | None = None, details: dict | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.fields = fields or {}
        self.details = details or {}
        super().__init__(self.message)


class NotFound(DomainError):
    """Not found."""

    code = "not_found"
    status_code = 404


class PermissionDenied(DomainError):
    """You do not have permission to do this."""

    code = "permission_denied"
    status_code = 403


class Conflict(DomainError):
    """The object is not in a state that allows this."""

    code = "conflict"
    status_code = 409


class IdempotencyConflict(DomainError):
    """The Idempotency-Key was already used with a different request."""

    code = "idempotency_conflict"
    status_code = 422


class RequestTooLarge(DomainError):
    """The request body is larger than this endpoint accepts."""

    code = "request_too_large"
    status_code = 413


class ServiceUnavailable(DomainError):
    """The service cannot take this request now; retry later."""

    code = "unavailable"
    status_code = 503


class QuotaExceeded(DomainError):
    """The organization's quota does not allow this now."""

    code = "quota_exceeded"
    status_code = 429
