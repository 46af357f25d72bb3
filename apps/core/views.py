"""Liveness and readiness probes, the site's front page and the API root; no authentication."""

from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.scopes import TokenScopePermission
from apps.core.health import readiness


@require_GET
@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request):
    results = readiness()
    failing = [r for r in results if not r.ok]
    body = {
        "status": "ok" if not failing else "unavailable",
        # Component names only: hosts and error texts stay in the logs and `manage.py preflight`.
        "checks": {r.name: "ok" if r.ok else "failing" for r in results},
    }
    if failing:
        body["failing"] = [r.name for r in failing]
    return JsonResponse(body, status=200 if not failing else 503)


@require_GET
def home(request):
    """What this is and where to go: admin, API docs, Flower, health."""
    return render(request, "home.html", {"flower_url": settings.FLOWER_URL})


# The collections a client starts from: name -> URL name under the v1 namespace.
API_COLLECTIONS = {
    "me": "me",
    "jobs": "jobs",
    "job_kinds": "job-kinds",
    "artifacts": "artifacts",
    "models": "models",
    "agents": "agents",
    "scenarios": "scenarios",
    "members": "members",
    "invitations": "invitations",
    "tokens": "tokens",
    "audit": "audit",
    "quota": "quota",
}


class ApiRootApi(APIView):
    """Where to start: the API's collections, its schema and its docs (no credentials needed)."""

    # Anonymous callers may read it; a token still needs the general `read` scope, like /me.
    permission_classes = [AllowAny, TokenScopePermission]
    required_scopes = {"GET": "read"}

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        version = serializers.CharField()
        schema = serializers.URLField()
        docs = serializers.URLField()
        endpoints = serializers.DictField(child=serializers.URLField(), help_text="Collection name -> URL.")

        class Meta:
            ref_name = "ApiRoot"

    @extend_schema(responses=OutputSerializer, operation_id="api_root", auth=[])
    def get(self, request):
        def url(name: str) -> str:
            return request.build_absolute_uri(reverse(name))

        return Response(
            {
                "name": settings.SPECTACULAR_SETTINGS["TITLE"],
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                "schema": url("schema"),
                "docs": url("api-docs"),
                "endpoints": {key: url(f"v1:{name}") for key, name in API_COLLECTIONS.items()},
            }
        )
