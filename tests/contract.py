"""Every API response a test produces is checked against /api/schema/: the schema is the truth.

`check_response` finds the operation for the request's path and method, requires the status
code to be documented there, and validates a JSON body against that response's schema
(OpenAPI 3.1, so plain JSON Schema 2020-12 with the document's components). The autouse
fixture in tests/conftest.py runs it on every APIClient request.
"""

import json
import re
from functools import cache

from jsonschema import Draft202012Validator

API_PREFIX = "/api/v1/"


@cache
def schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    # Through JSON: the generator's dict holds lazy strings and OrderedDicts.
    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


@cache
def _templates() -> list[tuple[re.Pattern, str]]:
    templates = []
    for path in schema()["paths"]:
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        templates.append((path.count("{"), pattern, path))
    # A literal segment wins over a parameter (/jobs/kinds/ before /jobs/{job_id}/).
    return [(pattern, path) for _, pattern, path in sorted(templates, key=lambda item: item[0])]


def operation_for(path: str, method: str) -> tuple[str, dict] | None:
    for pattern, template in _templates():
        if pattern.match(path):
            return template, schema()["paths"][template].get(method.lower())
    return None


@cache
def _validator(template: str, method: str, status: str) -> Draft202012Validator | None:
    response = schema()["paths"][template][method]["responses"][status]
    content = response.get("content", {}).get("application/json")
    if content is None:
        return None
    return Draft202012Validator({"allOf": [content["schema"]], "components": schema()["components"]})


def check_response(method: str, path: str, response) -> None:
    """AssertionError naming the mismatch when `response` is not what the schema promises."""
    if not path.startswith(API_PREFIX) or method.upper() in ("HEAD", "OPTIONS"):
        return
    found = operation_for(path, method)
    status = str(response.status_code)
    if found is None or found[1] is None:
        # Only the error shape can answer a path or method the schema does not have.
        assert status in ("404", "405"), f"{method} {path}: {status} from an operation the schema lacks"
        _check_error(method, path, response)
        return
    template, operation = found
    assert status in operation["responses"], (
        f"{method} {template}: status {status} is not documented (documented: {sorted(operation['responses'])})"
    )
    if response.status_code == 204 or getattr(response, "streaming", False):
        return
    validator = _validator(template, method.lower(), status)
    if validator is None:
        return
    assert response["Content-Type"].startswith("application/json"), f"{method} {template}: {response['Content-Type']}"
    errors = sorted(validator.iter_errors(response.json()), key=lambda e: list(e.absolute_path))
    assert not errors, f"{method} {template} {status}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:300]}" for e in errors[:5]
    )


def _check_error(method: str, path: str, response) -> None:
    body = response.json()
    assert {"detail", "code", "fields"} <= set(body), f"{method} {path}: not the error shape: {body}"
