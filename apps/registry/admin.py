from django.contrib import admin

from apps.core.admin import OrganizationScopedAdmin, ReadOnlyTabularInline
from apps.registry.models import MLModel, ModelAlias, ModelVersion


class ModelVersionInline(ReadOnlyTabularInline):
    model = ModelVersion
    fields = ["number", "stage", "device_preference", "size_bytes", "sha256", "opset", "ir_version", "created_at"]
    show_change_link = True


class ModelAliasInline(ReadOnlyTabularInline):
    model = ModelAlias
    fields = ["name", "version", "weight"]


@admin.register(MLModel)
class MLModelAdmin(OrganizationScopedAdmin):
    list_display = ["name", "organization", "task", "created_at"]
    list_filter = ["task", "organization"]
    search_fields = ["name", "description"]
    list_select_related = ["organization"]
    inlines = [ModelAliasInline, ModelVersionInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(OrganizationScopedAdmin):
    organization_path = "model__organization"
    list_display = ["__str__", "stage", "device_preference", "size_bytes", "opset", "created_by", "created_at"]
    list_filter = ["stage", "device_preference"]
    search_fields = ["model__name", "sha256"]
    list_select_related = ["model", "created_by"]
    readonly_fields = [
        "model",
        "number",
        "file",
        "sha256",
        "size_bytes",
        "signature",
        "ir_version",
        "opset",
        "producer",
        "stage",
        "derived_from",
        "report",
        "created_by",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False
