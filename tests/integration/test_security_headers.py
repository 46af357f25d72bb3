"""API answers are never cached; admin and HTML pages carry a Content-Security-Policy; docs work offline."""

import re
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles import finders

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _directives(policy: str) -> dict[str, list[str]]:
    parts = (part.strip().split() for part in policy.split(";") if part.strip())
    return {name: values for name, *values in parts}


def test_the_token_create_response_carrying_the_secret_is_not_stored(member):
    _, client = member("admin")
    created = client.post("/api/v1/tokens/", {"name": "ci"}, format="json")
    assert created.status_code == 201 and created.json()["token"].startswith("sy_")
    assert "no-store" in created["Cache-Control"]


@pytest.mark.parametrize(
    ("path", "authenticated"),
    [
        ("/api/v1/me", True),
        ("/api/v1/jobs/", True),
        ("/api/v1/me", False),  # 401
        ("/api/v1/no-such-endpoint", True),  # 404
        ("/api/schema/", True),
    ],
)
def test_api_responses_say_no_store(member, client, path, authenticated):
    if authenticated:
        _, client = member("developer")
    response = client.get(path)
    assert "no-store" in response["Cache-Control"], (path, response.status_code)


def test_admin_pages_carry_a_content_security_policy(client):
    assert "Content-Security-Policy" in client.get("/admin/login/")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    for path in ("/admin/", "/admin/jobs/job/", "/admin/operations/"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = _directives(response["Content-Security-Policy"])
        assert policy["default-src"] == ["'self'"]
        # No inline or evaluated script anywhere: an injected <script> would not run.
        assert policy["script-src"] == ["'self'"]
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]


def test_admin_html_has_no_inline_script_the_policy_would_block(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    for path in ("/admin/", "/admin/jobs/job/", "/admin/operations/", "/admin/login/"):
        html = client.get(path).content.decode()
        inline = [m for m in re.findall(r"<script\b[^>]*>", html) if "src=" not in m and "json" not in m]
        assert not inline, (path, inline)
        assert not re.search(r"\son[a-z]+=", html), f"{path}: inline event handler"


def test_api_docs_load_only_from_this_server_under_the_policy(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    policy = _directives(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]
    html = response.content.decode()
    references = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert references, html
    assert re.findall(r"<script\b[^>]*>\s*[^<\s]", html) == [], "inline script: the policy would block it"
    for url in references:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"docs page loads {url} from another host"
        if parts.path.startswith("/static/"):
            assert finders.find(parts.path.removeprefix("/static/")), f"{url} is not shipped"
        else:
            # The Swagger UI initialisation script is served by the docs view itself.
            script = client.get(url)
            assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()
            assert "/api/schema/" in script.content.decode()
    assert client.get("/api/schema/").status_code == 200
