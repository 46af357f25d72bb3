from axes import admin as axes_admin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from apps.accounts.models import ApiToken, AuditEvent, Membership, Organization, OrganizationQuota, User
from apps.accounts.permissions import PERMISSIONS, READ_AUDIT
from apps.accounts.services import (
    QUOTA_FIELDS,
    api_token_revoke_by_staff,
    audit_record,
    organization_quota_errors,
    organization_quota_set,
)
from apps.core.admin import OrganizationScopedAdmin


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ["username", "email", "is_staff", "is_active", "last_login"]


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    organization_path = ""  # the row is the organization itself
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]


class OrganizationQuotaForm(forms.ModelForm):
    class Meta:
        model = OrganizationQuota
        fields = ["organization", "concurrent_jobs", "sandbox_limits", "gpu_seconds_per_day"]

    def clean(self):
        cleaned = super().clean()
        values = {name: cleaned.get(name) for name in QUOTA_FIELDS}
        for name, messages in organization_quota_errors(values).items():
            self.add_error(name.split(".")[0], f"{name}: {'; '.join(messages)}")
        return cleaned


@admin.register(OrganizationQuota)
class OrganizationQuotaAdmin(admin.ModelAdmin):
    """Quotas are set by platform staff; every change goes through the service, so it is audited."""

    form = OrganizationQuotaForm
    list_display = ["organization", "concurrent_jobs", "sandbox_limits", "gpu_seconds_per_day", "updated_at"]
    autocomplete_fields = ["organization"]

    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def save_model(self, request, obj, form, change):
        saved = organization_quota_set(
            organization=obj.organization,
            actor=request.user,
            concurrent_jobs=obj.concurrent_jobs,
            sandbox_limits=obj.sandbox_limits,
            gpu_seconds_per_day=obj.gpu_seconds_per_day,
        )
        obj.pk = saved.pk


@admin.register(AuditEvent)
class AuditEventAdmin(OrganizationScopedAdmin):
    """Read-only: the trail is written by services, never edited."""

    list_display = ["created_at", "organization", "actor", "action", "target_type", "target_id"]
    list_filter = ["action", "organization"]
    search_fields = ["action", "target_id", "actor__username"]
    list_select_related = ["organization", "actor"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        # Staff see the trail only of organizations where their role may read it.
        return queryset.filter(
            organization__memberships__user=request.user,
            organization__memberships__role__in=PERMISSIONS[READ_AUDIT],
        ).distinct()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Membership)
class MembershipAdmin(OrganizationScopedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__username", "organization__slug"]
    list_select_related = ["user", "organization"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "role" in form.changed_data:
            audit_record(
                organization=obj.organization_id,
                actor=request.user,
                action="member.role_changed",
                target=obj,
                details={"username": obj.user.get_username(), "from": form.initial.get("role"), "to": obj.role},
            )


@admin.register(ApiToken)
class ApiTokenAdmin(OrganizationScopedAdmin):
    organization_path = "membership__organization"
    actions = ["revoke_tokens"]
    list_display = ["name", "prefix", "membership", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "membership__user__username"]
    list_select_related = ["membership__user", "membership__organization"]
    # The hash never leaves the database; tokens are created with `manage.py tokens create`.
    exclude = ["secret_hash"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True).select_related("membership__user"):
            api_token_revoke_by_staff(token=token, staff=request.user)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).")


# --- django-axes' login records (AXES_ENABLE_ADMIN is off; registered here instead) ----------
# Usernames, addresses and user agents of every login, across all organizations: superusers only.


class SuperuserOnlyAdminMixin:
    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(AccessAttempt)
class LoginAttemptAdmin(SuperuserOnlyAdminMixin, axes_admin.AccessAttemptAdmin):
    """Failed logins per username and address; deleting a row lifts that lockout."""


@admin.register(AccessLog)
class LoginLogAdmin(SuperuserOnlyAdminMixin, axes_admin.AccessLogAdmin):
    pass


@admin.register(AccessFailureLog)
class LoginFailureLogAdmin(SuperuserOnlyAdminMixin, axes_admin.AccessFailureLogAdmin):
    pass
