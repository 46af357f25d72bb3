"""One JSON error shape for the whole API: {"detail", "code", "fields"}."""

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.core.errors import DomainError


def _flatten(detail) -> object:
    """DRF ErrorDetail trees -> plain lists/dicts of strings."""
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, DomainError):
        body = {"detail": exc.message, "code": exc.code, "fields": exc.fields}
        if exc.details:
            body["details"] = exc.details
        response = Response(_bound_tree(body), status=exc.status_code)
        if "retry_after_s" in exc.details:
            response["Retry-After"] = str(int(exc.details["retry_after_s"]))
        return response
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(fields)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        if not isinstance(fields, dict):
            fields = {"non_field_errors": fields}
        first = next(iter(fields.items()), None)
        summary = "Invalid input."
        if first:
            name, messages = first
            message = messages[0] if isinstance(messages, list) and messages else messages
            summary = f"{name}: {message}" if isinstance(message, str) else f"Invalid input in {name}."
        response.data = {"detail": summary, "code": "invalid", "fields": fields}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = {"detail": str(detail), "code": code, "fields": {}}
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS and getattr(exc, "wait", None):
        response.data["retry_after_s"] = int(exc.wait)
    response.data = _bound_tree(response.data)
    return response


# --- Everything under /api/ answers JSON, whatever goes wrong and wherever ------------------

API_PREFIX = "/api/"
# Messages quote what the client sent (an unknown kind, a bad choice); a 1 MB value is not
# worth sending back twice its size. Long strings are cut, with the cut said.
ECHO_LIMIT = 200
# What a client should wait before retrying when PostgreSQL cannot be reached.
DATABASE_RETRY_AFTER_S = 5

_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
    500: "server_error",
    503: "unavailable",
}


def bounded(text: str, limit: int = ECHO_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _bound_tree(value):
    if isinstance(value, dict):
        return {bounded(str(key), 64): _bound_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bound_tree(item) for item in value]
    if isinstance(value, str):
        return bounded(value, ECHO_LIMIT * 2)
    return value


def error_body(status_code: int, detail: str, *, code: str | None = None, fields: dict | None = None) -> dict:
    return {"detail": detail, "code": code or _STATUS_CODES.get(status_code, "error"), "fields": fields or {}}


def error_response(status_code: int, detail: str, *, code: str | None = None, **extra):
    from django.http import JsonResponse

    body = error_body(status_code, detail, code=code)
    body.update(extra)
    return JsonResponse(body, status=status_code)


def _is_json(response) -> bool:
    return (response.get("Content-Type") or "").startswith("application/json")


def _server_error(request, exc: BaseException):
    """The JSON answer for an exception no view handled: 503 for a database outage, else 500."""
    import logging

    from django.core.exceptions import RequestDataTooBig
    from django.db import InterfaceError, OperationalError

    from apps.core.logs import current_request_id

    logger = logging.getLogger(__name__)
    if isinstance(exc, RequestDataTooBig):
        return error_response(413, "The request body is too large.")
    if isinstance(exc, RecursionError):
        return error_response(400, "The JSON body is nested too deeply.")
    request_id = current_request_id()
    if isinstance(exc, OperationalError | InterfaceError):
        logger.error("api.database_unavailable", extra={"path": request.path, "error": str(exc)[:500]})
        response = error_response(
            503,
            "The database cannot be reached; retry later.",
            retry_after_s=DATABASE_RETRY_AFTER_S,
            request_id=request_id,
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
        return response
    logger.error("api.server_error", exc_info=exc, extra={"path": request.path})
    return error_response(500, "Internal server error; quote the request id when reporting it.", request_id=request_id)


class ApiErrorMiddleware:
    """Under /api/, every error is the one JSON shape, whoever produced it.

    DRF's exception handler covers what happens inside a view; this covers the rest: no
    route (404), a method a plain Django view refuses (405), a body over the size limit
    (413, refused from Content-Length before anything reads it), an exception no view
    caught (500 with the request id, never a traceback) and the database being down
    (503 with Retry-After).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        too_large = self._too_large(request)
        if too_large is not None:
            return too_large
        response = self.get_response(request)
        if response.status_code >= 400 and not _is_json(response) and not getattr(response, "streaming", False):
            replacement = self._as_json(request, response)
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if response.has_header(header):
                    replacement[header] = response[header]
            return replacement
        return response

    def process_exception(self, request, exc):
        if not request.path.startswith(API_PREFIX):
            return None
        return _server_error(request, exc)

    @staticmethod
    def _too_large(request):
        from django.conf import settings

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "Content-Length is not a number.")
        content_type = request.META.get("CONTENT_TYPE", "")
        # File uploads stream to disk and have their own limits (ARTIFACTS_MAX_UPLOAD_BYTES, model sizes).
        limit = None if content_type.startswith("multipart/") else settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and length > limit:
            return error_response(
                413,
                f"The request body is {length} bytes; at most {limit} are accepted here. Large inference "
                "inputs go up as a .npy/.npz (POST /api/v1/artifacts/), named by params.inputs_artifact.",
                limit_bytes=limit,
            )
        return None

    @staticmethod
    def _as_json(request, response):
        status_code = response.status_code
        if status_code == 404:
            return error_response(404, f"No API endpoint at {bounded(request.path, 100)}.")
        if status_code == 405:
            return error_response(405, f"Method {request.method} is not allowed here.")
        if status_code >= 500:
            from apps.core.logs import current_request_id

            return error_response(status_code, "Internal server error.", request_id=current_request_id())
        return error_response(status_code, _STATUS_CODES.get(status_code, "error").replace("_", " ").capitalize() + ".")


def server_error(request, *args, **kwargs):
    """handler500: JSON under /api/ (503 when the database is down), Django's page elsewhere."""
    import sys

    from django.views.defaults import server_error as html_server_error

    if request.path.startswith(API_PREFIX):
        exc = sys.exc_info()[1]
        return _server_error(request, exc if exc is not None else Exception("unknown"))
    return html_server_error(request, *args, **kwargs)
