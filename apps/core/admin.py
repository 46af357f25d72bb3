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

    # The lookup from the model to Organization, e.g. "organization" or "model__organization";
    # "" when the model is Organization itself.
    organization_path = "organization"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        path = f"{self.organization_path}__memberships__user" if self.organization_path else "memberships__user"
        return queryset.filter(**{path: request.user}).distinct()
