"""schemathesis generates requests for every operation in /api/schema/ and checks the answers:
no 5xx, every status documented, every body and content type as documented, schema-violating
requests refused, unsupported methods 405, a missing required header refused.

Bounded (a few examples per operation) so it runs in the suite; the app is called in-process
through WSGI with an owner's token whose rate limit is lifted. Requests that are valid by the
schema but refused by a rule (an unknown job kind, a quota) are fine: they must only be
documented errors in the documented shape.
"""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.contract import schema

API = schemathesis.openapi.from_dict(schema())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    missing_required_header,
]
APP = WSGIHandler()


@pytest.fixture
def _keep_the_test_connection():
    """As Django's test client does: a real WSGI handler closes the connection after each request,
    which would end the test's transaction."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def owner_token(db, monkeypatch, _keep_the_test_connection):
    from apps.accounts.services import api_token_create
    from apps.accounts.throttling import TokenRateThrottle
    from apps.agents.services import agent_create
    from tests.factories import MembershipFactory

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"api": "1000000/minute"})
    membership = MembershipFactory(role="owner")
    agent_create(membership=membership, name="ada", kind="research", embedding=[1.0] + [0.0] * 383)
    return api_token_create(membership=membership, name="schemathesis").plaintext


@API.parametrize()
@hypothesis_settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, owner_token):
    case.call_and_validate(app=APP, headers={"Authorization": f"Token {owner_token}"}, checks=CHECKS)
