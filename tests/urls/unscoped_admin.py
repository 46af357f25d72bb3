"""The project's URLs with an admin site that has one deliberately unscoped ModelAdmin (Agent).

tests/integration/test_admin_tenant_sweep.py proves with it that the sweep catches an admin
registered without the tenant scoping mechanism.
"""

from django.contrib import admin
from django.urls import path

from apps.agents.models import Agent
from project import urls as project_urls

site = admin.AdminSite(name="admin")  # the same namespace, so the apps' reverse("admin:...") works
for model, model_admin in admin.site._registry.items():
    site.register(model, type(model_admin))
site.unregister(Agent)
site.register(Agent, admin.ModelAdmin)

urlpatterns = [
    path("admin/", site.urls),
    *(pattern for pattern in project_urls.urlpatterns if str(pattern.pattern) != "admin/"),
]
