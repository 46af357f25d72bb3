"""Admin building blocks shared by the apps."""

from django.contrib import admin


class ReadOnlyTabularInline(admin.TabularInline):
    """An inline that shows audit data: every field read-only, nothing added or deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class OrganizationScopedAdmin(admin.ModelAdmin):
    """Staff who are not superusers see only rows of organizations they belong to."""

    # The lookup from the model to Organization, e.g. "organization" or "model__organization".
    organization_path = "organization"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.organization_path}__memberships__user": request.user}).distinct()
