from django.contrib import admin, messages

from apps.accounts.permissions import COMPILE_MODELS, PROMOTE_MODELS, READ_MODELS, UPLOAD_MODELS
from apps.core.admin import (
    OrganizationScopedAdmin,
    ReadOnlyTabularInline,
    StoredFileAdminMixin,
    admin_actor,
    json_block,
)
from apps.core.errors import DomainError
from apps.registry import services
from apps.registry.models import MLModel, ModelAlias, ModelAliasEvent, ModelVersion
from workers.compile_targets import TARGETS


class ModelVersionInline(ReadOnlyTabularInline):
    model = ModelVersion
    fields = ["number", "stage", "device_preference", "size_bytes", "sha256", "opset", "ir_version", "created_at"]
    show_change_link = True


class ModelAliasInline(ReadOnlyTabularInline):
    model = ModelAlias
    fields = ["name", "version", "weight"]


class ModelAliasEventInline(ReadOnlyTabularInline):
    model = ModelAliasEvent
    fk_name = "model"
    fields = ["created_at", "alias", "version", "previous_version", "weight", "actor", "reason"]
    verbose_name_plural = "alias history"


@admin.register(MLModel)
class MLModelAdmin(OrganizationScopedAdmin):
    view_action = READ_MODELS
    change_action = UPLOAD_MODELS
    list_display = ["name", "organization", "task", "created_at"]
    list_filter = ["task", "organization"]
    search_fields = ["name", "description"]
    list_select_related = ["organization"]
    inlines = [ModelAliasInline, ModelAliasEventInline, ModelVersionInline]


@admin.register(ModelAliasEvent)
class ModelAliasEventAdmin(OrganizationScopedAdmin):
    """The alias history: read-only (the registry services write it with every alias move)."""

    organization_path = "model__organization"
    view_action = READ_MODELS
    change_action = PROMOTE_MODELS
    list_display = ["created_at", "model", "alias", "version", "previous_version", "weight", "actor", "reason"]
    list_filter = ["alias"]
    search_fields = ["model__name", "reason", "actor__username"]
    list_select_related = ["model", "version", "previous_version", "actor"]
    date_hierarchy = "created_at"
    readonly_fields = ["model", "alias", "version", "previous_version", "weight", "actor", "reason", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(StoredFileAdminMixin, OrganizationScopedAdmin):
    organization_path = "model__organization"
    view_action = READ_MODELS
    # Every field is read-only; the compile actions go through the service, which checks the role.
    change_action = COMPILE_MODELS
    list_display = [
        "__str__",
        "stage",
        "device_preference",
        "size_bytes",
        "opset",
        "derived_from",
        "report_passed",
        "created_by",
        "created_at",
    ]
    list_filter = ["stage", "device_preference"]
    actions = ["promote_to_production", *(f"compile_to_{target.replace('-', '_')}" for target in TARGETS)]
    search_fields = ["model__name", "sha256"]
    list_select_related = ["model", "created_by"]
    readonly_fields = [
        "model",
        "number",
        "stored_file_link",
        "sha256",
        "size_bytes",
        "signature_display",
        "ir_version",
        "opset",
        "producer",
        "stage",
        "derived_from",
        "report_display",
        "created_by",
        "created_at",
    ]
    exclude = ["signature", "report", "file"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="signature")
    def signature_display(self, version):
        return json_block(version.signature)

    @admin.display(description="report")
    def report_display(self, version):
        return json_block(version.report, open_up_to=2000)

    @admin.display(description="report", boolean=True)
    def report_passed(self, version):
        return version.report.get("passed") if version.report else None

    def _compile(self, request, queryset, target: str):
        submitted, refused = 0, []
        for version in queryset.select_related("model", "model__organization"):
            try:
                services.model_version_compile(
                    membership=admin_actor(request, version.model.organization), version=version, target=target
                )
                submitted += 1
            except DomainError as exc:
                refused.append(f"{version}: {exc.message}")
        if submitted:
            self.message_user(request, f"Submitted {submitted} compile job(s) for {target}.", messages.SUCCESS)
        for line in refused[:20]:
            self.message_user(request, line, messages.WARNING)

    @admin.action(description="Promote to production (an archived version: rollback, owner or admin)")
    def promote_to_production(self, request, queryset):
        # Through the service: role, gate, rollback rule, alias history and audit as in the API.
        for version in queryset.select_related("model", "model__organization"):
            try:
                services.model_version_promote(
                    membership=admin_actor(request, version.model.organization),
                    version=version,
                    stage="production",
                    reason=f"admin action by {request.user.get_username()}",
                )
            except DomainError as exc:
                self.message_user(request, f"{version}: {exc.message}", messages.WARNING)
            else:
                self.message_user(request, f"{version} is production.", messages.SUCCESS)

    @admin.action(description="Compile to cpu-optimized (new staging version, validated)")
    def compile_to_cpu_optimized(self, request, queryset):
        self._compile(request, queryset, "cpu-optimized")

    @admin.action(description="Compile to cpu-int8 (new staging version, validated)")
    def compile_to_cpu_int8(self, request, queryset):
        self._compile(request, queryset, "cpu-int8")

    @admin.action(description="Compile to gpu-fp16 (new staging version, validated)")
    def compile_to_gpu_fp16(self, request, queryset):
        self._compile(request, queryset, "gpu-fp16")
