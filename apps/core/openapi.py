"""Schema post-processing: every operation documents the errors it can answer, in the one shape."""

from apps.core.pagination import MAX_PAGE_SIZE

ERROR_COMPONENT = {
    "type": "object",
    "description": "Every error under /api/ (apps/core/api.py).",
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, for a person."},
        "code": {"type": "string", "description": "Stable machine-readable reason, e.g. `invalid`, `not_found`."},
        "fields": {
            "type": "object",
            "description": "Field or parameter name -> its messages (validation errors only).",
            "additionalProperties": {},
        },
        "request_id": {"type": "string", "description": "On 500 and 503: quote it when reporting the error."},
        "retry_after_s": {"type": "integer", "description": "On 429 and 503, as the Retry-After header."},
    },
    "required": ["detail", "code", "fields"],
    "additionalProperties": True,
}

_DESCRIPTIONS = {
    "400": "Invalid input: a body field, a query parameter or the JSON itself (`fields` names each).",
    "401": "No credentials, or an unknown or revoked token.",
    "403": "The role or the token's scopes do not allow this.",
    "404": "No such object in the caller's organization.",
    "405": "The method is not allowed on this path.",
    "409": "The object is not in a state that allows this.",
    "413": "The request body is over the size limit.",
    "415": "The body is not JSON (or not multipart, on an upload).",
    "422": "The Idempotency-Key was used with a different request.",
    "429": "Over a rate limit or quota; see Retry-After.",
    "500": "Server error; the body carries a request id, never a traceback.",
    "503": "Overloaded or a dependency (database, broker) is down; see Retry-After.",
}


def _error_response(code: str) -> dict:
    response = {
        "description": _DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if code in ("429", "503"):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
    return response


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: add the Error component and each operation's 4xx/5xx."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_COMPONENT
    _nullable_as_any_of(result)
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "page_size" and parameter["in"] == "query":
                    parameter["schema"].update(minimum=1, maximum=MAX_PAGE_SIZE)
            codes = ["400", "401", "403", "405", "409", "429", "500", "503"]
            if "{" in path:
                codes.append("404")
            if method != "get":
                codes += ["413", "415"]
            if operation.get("operationId") in IDEMPOTENT_OPERATIONS:
                codes.append("422")
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(code, _error_response(code))
    return result


IDEMPOTENT_OPERATIONS = {"jobs_submit", "scenarios_run", "scenarios_sweep"}


def _nullable_as_any_of(node) -> None:
    """`oneOf: [X, {type: null}]` -> `anyOf`: for a nullable JSONField X is `{}`, which null
    also matches, so `oneOf` (exactly one) would refuse the very null it means to allow."""
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            one_of = item.get("oneOf")
            if isinstance(one_of, list) and {"type": "null"} in one_of:
                item["anyOf"] = item.pop("oneOf")
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
