"""`/metrics` for Prometheus and the operator dashboard in the admin."""

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import choose_encoder

from apps.operations import charts, selectors
from apps.operations.metrics import REGISTRY
from apps.operations.templatetags.operations import run_time


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def metrics_access_allowed(request) -> bool:
    """A matching `Authorization: Bearer <METRICS_TOKEN>`, or a client address in METRICS_ALLOWED_NETWORKS.

    The address is REMOTE_ADDR only: X-Forwarded-For is whatever the client wrote.
    """
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


@require_GET
@never_cache
def metrics(request):
    if not metrics_access_allowed(request):
        response = JsonResponse(
            {
                "detail": "Metrics need 'Authorization: Bearer <METRICS_TOKEN>' "
                "or a client address in METRICS_ALLOWED_NETWORKS.",
                "code": "not_authenticated",
                "fields": {},
            },
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Prometheus says in Accept which format it reads (OpenMetrics or text 0.0.4); give it that.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)


@never_cache
def dashboard(request):
    """Queues, throughput and failures over the last hour, slow and failing jobs, worker hosts.

    Staff only (wrapped in admin_view); jobs are limited to the user's organizations unless
    they are a superuser. Queues and hosts are shared infrastructure and shown to all staff.
    """
    user = request.user
    throughput = selectors.throughput_by_minute(user=user)
    backlog = selectors.backlog_by_minute(user=user)
    outcomes = {name: throughput.series[name] for name in ("succeeded", "failed", "cancelled")}
    # The system's failures (dead letters: operations must act) apart from the jobs' own.
    failures = {name: throughput.series[name] for name in selectors.FAILURE_SERIES.values()}
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "scoped": not user.is_superuser,
        "queues": selectors.queue_overview(user=user),
        "backlog_chart": charts.lines(backlog.starts, backlog.series, title="Jobs waiting per queue, last hour"),
        "backlog_legend": charts.legend(list(backlog.series)),
        "throughput_chart": charts.stacked_bars(
            throughput.starts, outcomes, title="Jobs finished per minute, last hour", colours=charts.OUTCOME_COLOURS
        ),
        "throughput_legend": charts.legend(list(outcomes), charts.OUTCOME_COLOURS),
        "failures_chart": charts.stacked_bars(
            throughput.starts, failures, title="Jobs failed per minute, last hour", colours=charts.FAILURE_COLOURS
        ),
        "failures_legend": charts.legend(list(failures), charts.FAILURE_COLOURS),
        "totals": {name: sum(values) for name, values in throughput.series.items()},
        "failures_by_code": selectors.failures_by_code(user=user),
        "slowest": selectors.slowest_jobs(user=user),
        "failing": selectors.failing_jobs(user=user),
        "hosts": selectors.worker_hosts(),
        "flower_url": settings.FLOWER_URL,
    }
    return TemplateResponse(request, "operations/dashboard.html", context)


@never_cache
def dashboard_live(request):
    """The dashboard's "Queues now" numbers as JSON, for its polling script (staff only, wrapped in admin_view).

    Counted over the user's organizations' jobs like the page itself (selectors.queue_overview).
    """
    rows = [
        {
            **row,
            "oldest_wait": run_time(row["oldest_wait"]),
            "broker": "broker unreachable" if row["broker"] is None else row["broker"],
        }
        for row in selectors.queue_overview(user=request.user)
    ]
    return JsonResponse({"queues": rows})
