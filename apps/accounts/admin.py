from axes import admin as axes_admin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group

from apps.accounts.models import ApiToken, AuditEvent, Invitation, Membership, Organization, OrganizationQuota, User
from apps.accounts.permissions import (
    MANAGE_ANY_TOKEN,
    MANAGE_MEMBERS,
    MANAGE_OWN_TOKENS,
    READ_AUDIT,
    READ_MEMBERS,
    grantable_roles,
)
from apps.accounts.services import (
    QUOTA_FIELDS,
    api_token_revoke,
    audit_record,
    invitation_create,
    invitation_revoke,
    member_remove,
    member_set_role,
    organization_quota_errors,
    organization_quota_set,
)
from apps.core.admin import (
    OrganizationScopedAdmin,
    PlatformAdmin,
    ReadOnlyTabularInline,
    admin_actor,
    organizations_where,
)
from apps.core.errors import DomainError


class MembershipInline(ReadOnlyTabularInline):
    """Members are added by invitation and changed on the membership page, through the services."""

    model = Membership
    fields = ["user", "role", "created_at"]


# Accounts are the platform's: only superusers create users, reset passwords or set the
# staff and superuser flags. Organization owners and admins manage memberships instead.
@admin.register(User)
class UserAdmin(PlatformAdmin, BaseUserAdmin):
    list_display = ["username", "email", "is_staff", "is_superuser", "is_active", "last_login"]


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(PlatformAdmin, BaseGroupAdmin):
    """Groups carry model permissions: granting them is granting admin rights, a superuser's call."""


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    organization_path = ""  # the row is the organization itself
    change_action = MANAGE_MEMBERS
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]

    def has_add_permission(self, request):
        # Tenants are created by the platform (superusers: here or `manage.py organizations create`).
        return request.user.is_superuser and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)


class OrganizationQuotaForm(forms.ModelForm):
    class Meta:
        model = OrganizationQuota
        fields = [
            *["organization", "concurrent_jobs", "running_jobs", "share_weight"],
            *["sandbox_limits", "gpu_seconds_per_day", "job_retention_days"],
        ]

    def clean(self):
        cleaned = super().clean()
        values = {name: cleaned.get(name) for name in QUOTA_FIELDS}
        for name, messages_ in organization_quota_errors(values).items():
            self.add_error(name.split(".")[0], f"{name}: {'; '.join(messages_)}")
        return cleaned


@admin.register(OrganizationQuota)
class OrganizationQuotaAdmin(PlatformAdmin):
    """Quotas are set by platform staff; every change goes through the service, so it is audited."""

    form = OrganizationQuotaForm
    list_display = [
        *["organization", "concurrent_jobs", "running_jobs"],
        *["sandbox_limits", "gpu_seconds_per_day", "updated_at"],
    ]
    autocomplete_fields = ["organization"]

    def save_model(self, request, obj, form, change):
        saved = organization_quota_set(
            organization=obj.organization,
            actor=request.user,
            concurrent_jobs=obj.concurrent_jobs,
            running_jobs=obj.running_jobs,
            share_weight=obj.share_weight,
            sandbox_limits=obj.sandbox_limits,
            gpu_seconds_per_day=obj.gpu_seconds_per_day,
            job_retention_days=obj.job_retention_days,
        )
        obj.pk = saved.pk


@admin.register(AuditEvent)
class AuditEventAdmin(OrganizationScopedAdmin):
    """Read-only: the trail is written by services, never edited. Platform events (no organization) are superusers'."""

    view_action = READ_AUDIT
    list_display = ["created_at", "organization", "actor", "action", "target_type", "target_id"]
    list_filter = ["action", "organization"]
    search_fields = ["action", "target_id", "actor__username"]
    list_select_related = ["organization", "actor"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class MembershipForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["user", "organization", "role"]


@admin.register(Membership)
class MembershipAdmin(OrganizationScopedAdmin):
    """Roles change and members leave through the services (audited, owner rules); members join by invitation.

    Adding a membership directly is the platform operator's (superusers), also audited.
    """

    form = MembershipForm
    view_action = READ_MEMBERS
    change_action = MANAGE_MEMBERS
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    search_fields = ["user__username", "organization__slug"]
    list_select_related = ["user", "organization"]
    autocomplete_fields = ["user", "organization"]

    def has_add_permission(self, request):
        return request.user.is_superuser and super().has_add_permission(request)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "user"] if obj is not None and "user" not in fields else fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None and "role" in form.base_fields:
            # Offer only the roles this user may grant here: never one above their own.
            allowed = set(grantable_roles(admin_actor(request, obj.organization)))
            field = form.base_fields["role"]
            field.choices = [(value, label) for value, label in field.choices if value in allowed or value == obj.role]
        return form

    def save_model(self, request, obj, form, change):
        self.check_may_change(request, obj)
        actor = admin_actor(request, obj.organization)
        try:
            if change:
                previous = Membership.objects.get(pk=obj.pk)
                obj.role, role = previous.role, obj.role
                saved = member_set_role(actor=actor, membership=previous, role=role)
                obj.role = saved.role
            else:
                obj.save()
                audit_record(
                    organization=obj.organization_id,
                    actor=actor,
                    action="member.added",
                    target=obj,
                    details={"username": obj.user.get_username(), "role": obj.role},
                )
        except DomainError as exc:
            raise _refused(exc) from exc

    def delete_model(self, request, obj):
        self.check_may_change(request, obj)
        try:
            member_remove(actor=admin_actor(request, obj.organization), membership=obj)
        except DomainError as exc:
            raise _refused(exc) from exc

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("organization", "user"):
            self.delete_model(request, membership)


def _refused(exc: DomainError):
    """A service's refusal inside an admin save: shown as a permission error, nothing written."""
    from django.core.exceptions import PermissionDenied

    return PermissionDenied(exc.message)


@admin.register(ApiToken)
class ApiTokenAdmin(OrganizationScopedAdmin):
    """Tokens are created by their member (API, CLI) and only revoked here: never moved, widened or deleted."""

    organization_path = "membership__organization"
    view_action = MANAGE_OWN_TOKENS
    change_action = MANAGE_OWN_TOKENS
    actions = ["revoke_tokens"]
    list_display = ["name", "prefix", "membership", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "membership__user__username"]
    list_select_related = ["membership__user", "membership__organization"]
    # The hash never leaves the database.
    exclude = ["secret_hash"]
    readonly_fields = [
        *["name", "prefix", "membership", "scopes"],
        *["created_at", "expires_at", "last_used_at", "revoked_at"],
    ]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        # Your own tokens everywhere; other members' only where your role manages any token.
        return queryset.filter(membership__user=request.user) | queryset.filter(
            membership__organization__in=organizations_where(request.user, MANAGE_ANY_TOKEN)
        )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request, queryset):
        revoked, refused = 0, []
        for token in queryset.filter(revoked_at__isnull=True).select_related(
            "membership__user", "membership__organization"
        ):
            try:
                api_token_revoke(token=token, actor=admin_actor(request, token.membership.organization))
                revoked += 1
            except DomainError as exc:
                refused.append(f"{token}: {exc.message}")
        self.message_user(request, f"Revoked {revoked} token(s).")
        for line in refused[:20]:
            self.message_user(request, line, messages.WARNING)


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ["organization", "username", "role"]


@admin.register(Invitation)
class InvitationAdmin(OrganizationScopedAdmin):
    """New members join by invitation: made and revoked here through the services (audited), answered by the invitee."""

    form = InvitationForm
    view_action = READ_MEMBERS
    change_action = MANAGE_MEMBERS
    actions = ["revoke_invitations"]
    list_display = ["username", "organization", "role", "status", "invited_by", "created_at", "expires_at"]
    list_filter = ["role", "organization"]
    search_fields = ["username", "organization__slug"]
    list_select_related = ["organization", "invited_by"]

    def get_readonly_fields(self, request, obj=None):
        # Once sent, an invitation is only revoked (and answered by its addressee), never edited.
        return [field.name for field in Invitation._meta.fields] if obj is not None else []

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None and "role" in form.base_fields and not request.user.is_superuser:
            # The highest role this user may grant in any organization they manage; the service
            # checks the chosen organization's own rule again.
            grantable = set()
            for membership in Membership.objects.filter(
                user=request.user, organization__in=organizations_where(request.user, MANAGE_MEMBERS)
            ):
                grantable |= set(grantable_roles(membership))
            field = form.base_fields["role"]
            field.choices = [(value, label) for value, label in field.choices if value in grantable]
        return form

    def save_model(self, request, obj, form, change):
        self.check_may_change(request, obj)
        try:
            saved = invitation_create(
                actor=admin_actor(request, obj.organization), username=obj.username, role=obj.role
            )
        except DomainError as exc:
            raise _refused(exc) from exc
        obj.pk = saved.pk

    def has_delete_permission(self, request, obj=None):
        return False  # the trail of who was invited stays; revoke instead

    @admin.action(description="Revoke selected invitations")
    def revoke_invitations(self, request, queryset):
        revoked, refused = 0, []
        for invitation in queryset.select_related("organization"):
            try:
                invitation_revoke(actor=admin_actor(request, invitation.organization), invitation=invitation)
                revoked += 1
            except DomainError as exc:
                refused.append(f"{invitation.username}: {exc.message}")
        self.message_user(request, f"Revoked {revoked} invitation(s).")
        for line in refused[:20]:
            self.message_user(request, line, messages.WARNING)


# --- django-axes' login records (AXES_ENABLE_ADMIN is off; registered here instead) ----------
# Usernames, addresses and user agents of every login, across all organizations: the platform's.


@admin.register(AccessAttempt)
class LoginAttemptAdmin(PlatformAdmin, axes_admin.AccessAttemptAdmin):
    """Failed logins per username and address; deleting a row lifts that lockout."""


@admin.register(AccessLog)
class LoginLogAdmin(PlatformAdmin, axes_admin.AccessLogAdmin):
    pass


@admin.register(AccessFailureLog)
class LoginFailureLogAdmin(PlatformAdmin, axes_admin.AccessFailureLogAdmin):
    pass
