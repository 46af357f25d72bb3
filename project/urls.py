from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from apps.core.views import ApiRootApi, healthz, home, readyz
from apps.operations.views import dashboard, dashboard_live, metrics

admin.site.site_header = "Switchyard"
admin.site.site_title = "Switchyard admin"

api_v1 = [
    path("", ApiRootApi.as_view(), name="api-root"),
    path("", include("apps.accounts.api.urls")),
    path("", include("apps.jobs.api.urls")),
    path("", include("apps.registry.api.urls")),
    path("", include("apps.agents.api.urls")),
]

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("admin/operations/", admin.site.admin_view(dashboard), name="operations-dashboard"),
    path("admin/operations/live/", admin.site.admin_view(dashboard_live), name="operations-dashboard-live"),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Split: the initialisation script is served from this URL (?script=), not inline, so the
    # CSP can forbid inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="api/redoc.html"),
        name="api-redoc",
    ),
]

# JSON (503 when the database is down) under /api/; Django's page elsewhere.
handler500 = "apps.core.api.server_error"
