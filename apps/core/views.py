"""Liveness and readiness probes; no authentication, no secrets in the answers."""

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

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
