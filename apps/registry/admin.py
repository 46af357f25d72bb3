from django.contrib import admin

from apps.registry.models import MLModel, ModelAlias, ModelVersion


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    fields = ["number", "stage", "device_preference", "size_bytes", "sha256", "opset", "ir_version", "created_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 0
    fields = ["name", "version", "weight"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(MLModel)
class MLModelAdmin(admin.ModelAdmin):
    list_display = ["name", "organization", "task", "created_at"]
    list_filter = ["task", "organization"]
    search_fields = ["name", "description"]
    list_select_related = ["organization"]
    inlines = [ModelAliasInline, ModelVersionInline]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(organization__memberships__user=request.user)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
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

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(model__organization__memberships__user=request.user)
