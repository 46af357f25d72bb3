"""Admin building blocks shared by the apps, and the tenant rule of the admin.

The rule, stated once (docs/permissions.md, "The admin"):

- A **superuser** is the platform operator: every row of every organization, and the
  platform's own tables (users, groups, worker hosts, quotas, lockouts). What a superuser
  does to an organization's objects runs through the services as `PlatformOperator`.
- **Any other staff user** acts organization by organization with the role they hold there,
  like the API: a row is shown only where that role has the admin's `view_action`, changed,
  added or deleted only where it has `change_action`, on top of the Django model permissions
  the admin checks anyway. Every foreign-key, many-to-many and autocomplete choice and every
  list-filter choice offers only rows the user may see. Objects never move between
  organizations.
- Every registered ModelAdmin is either an `OrganizationScopedAdmin` or a `PlatformAdmin`;
  tests/integration/test_admin_tenant_sweep.py walks the registry and fails otherwise.
"""

from functools import reduce
from pathlib import PurePosixPath

from django.contrib import admin
from django.contrib.admin.filters import RelatedFieldListFilter, RelatedOnlyFieldListFilter
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import models
from django.http import Http404
from django.urls import path, reverse
from django.utils.html import format_html


class ReadOnlyTabularInline(admin.TabularInline):
    """An inline that shows audit data: every field read-only, nothing added or deleted here."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class ReadOnlyPagesMixin:
    """A change page with nothing to edit shows no Save or Delete buttons (only "Close")."""

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        nothing_to_edit = not context["adminform"].form.fields and all(
            isinstance(formset.opts, ReadOnlyTabularInline) for formset in context.get("inline_admin_formsets", [])
        )
        if change and nothing_to_edit:
            context.update(
                show_save=False, show_save_and_continue=False, show_save_and_add_another=False, show_delete=False
            )
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)


class PlatformAdmin(ReadOnlyPagesMixin, admin.ModelAdmin):
    """Platform tables (users, groups, worker hosts, quotas, lockouts): superusers only."""

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_superuser and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser and super().has_delete_permission(request, obj)


def organizations_where(user, action: str | None) -> models.QuerySet:
    """Ids of the organizations where `user`'s role allows `action` (None: any role)."""
    from apps.accounts.models import Membership
    from apps.accounts.permissions import PERMISSIONS

    memberships = Membership.objects.filter(user=user, user__is_active=True)
    if action is not None:
        memberships = memberships.filter(role__in=PERMISSIONS[action])
    return memberships.values("organization_id")


def admin_actor(request, organization):
    """Who acts on `organization`'s objects from the admin: the platform operator or the user's membership."""
    from apps.accounts.models import Membership
    from apps.accounts.permissions import PlatformOperator
    from apps.core.errors import PermissionDenied as Refused

    if request.user.is_superuser:
        return PlatformOperator(user=request.user, organization=organization)
    membership = Membership.objects.select_related("organization").filter(user=request.user, organization=organization)
    found = membership.first()
    if found is None:
        raise Refused(f"You are not a member of {organization}.")
    return found


class OrganizationScopedAdmin(ReadOnlyPagesMixin, admin.ModelAdmin):
    """A tenant model's admin: what a staff user sees and changes follows their role per organization."""

    # The lookup from the model to Organization, e.g. "organization" or "model__organization";
    # "" when the model is Organization itself.
    organization_path = "organization"
    # Actions of apps.accounts.permissions: the role needed to see rows, and to change, add or
    # delete them. None for view_action: any role in the organization.
    view_action: str | None = None
    change_action: str | None = None

    # --- which organizations -------------------------------------------------------------

    def _organizations(self, request, action: str | None):
        return organizations_where(request.user, action)

    def _lookup(self, suffix: str) -> str:
        return f"{self.organization_path}__{suffix}" if self.organization_path else ""

    def organization_of(self, obj):
        """The Organization an object belongs to (None for rows that belong to none)."""
        if not self.organization_path:
            return obj
        return reduce(lambda value, name: getattr(value, name, None), self.organization_path.split("__"), obj)

    def _allowed(self, request, obj, action: str | None) -> bool:
        if request.user.is_superuser:
            return True
        if obj is None:
            return self._organizations(request, action).exists()
        organization = self.organization_of(obj)
        return (
            organization is not None
            and self._organizations(request, action).filter(organization_id=organization.pk).exists()
        )

    # --- rows --------------------------------------------------------------------------------

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{self._lookup("in") or "pk__in": self._organizations(request, self.view_action)})

    def has_module_permission(self, request):
        return super().has_module_permission(request) and self._allowed(request, None, self.view_action)

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and self._allowed(request, obj, self.view_action)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._allowed(request, obj, self.change_action)

    def has_add_permission(self, request):
        return super().has_add_permission(request) and self._allowed(request, None, self.change_action)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._allowed(request, obj, self.change_action)

    def check_may_change(self, request, obj) -> None:
        """The last word before a write: the object's organization must allow the user's change."""
        if not self._allowed(request, obj, self.change_action):
            raise PermissionDenied

    def save_model(self, request, obj, form, change):
        self.check_may_change(request, obj)
        super().save_model(request, obj, form, change)

    def delete_model(self, request, obj):
        self.check_may_change(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # The bulk "delete selected" action asks has_delete_permission without an object.
        for obj in queryset:
            self.check_may_change(request, obj)
        super().delete_queryset(request, queryset)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        first = self.organization_path.split("__")[0]
        if obj is not None and first and first not in fields:
            fields.append(first)  # an object never moves to another organization
        return fields

    # --- choices -----------------------------------------------------------------------------

    def _choices_for(self, request, related_model, queryset):
        """Restrict a relation's choices to rows the user may use, whatever the relation."""
        from apps.accounts.models import Organization, User

        if request.user.is_superuser:
            return queryset
        if related_model is Organization:
            return queryset.filter(pk__in=self._organizations(request, self.change_action))
        if issubclass(related_model, User):
            return queryset.filter(memberships__organization__in=self._organizations(request, self.change_action))
        related_admin = self.admin_site._registry.get(related_model)
        if isinstance(related_admin, OrganizationScopedAdmin):
            return queryset.filter(pk__in=related_admin.get_queryset(request).values("pk"))
        return queryset.none()

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = self._choices_for(request, db_field.related_model, field.queryset).distinct()
        return field

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if field is not None and hasattr(field, "queryset"):
            field.queryset = self._choices_for(request, db_field.related_model, field.queryset).distinct()
        return field

    def get_list_filter(self, request):
        """Relation filters list only related rows of visible rows (never every organization)."""
        scoped = []
        for spec in super().get_list_filter(request):
            name = spec[0] if isinstance(spec, tuple | list) else spec
            filter_class = spec[1] if isinstance(spec, tuple | list) else None
            if (
                isinstance(name, str)
                and self._is_relation(name)
                and (filter_class is None or filter_class is RelatedFieldListFilter)
            ):
                scoped.append((name, RelatedOnlyFieldListFilter))
            else:
                scoped.append(spec)
        return scoped

    def _is_relation(self, path: str) -> bool:
        model = self.model
        field = None
        for name in path.split("__"):
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:
                return False
            model = field.related_model or model
        return bool(field is not None and field.is_relation)


def json_block(value, *, open_up_to: int = 600) -> str:
    """A JSON value for a read-only admin field: pretty-printed, in a <details> that starts open only when short."""
    import json

    from django.utils.html import format_html

    if value in (None, {}, []):
        return "-"
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    if isinstance(value, dict):
        summary = f"{len(value)} key{'s' if len(value) != 1 else ''}: {', '.join(list(map(str, value))[:8])}"
    elif isinstance(value, list):
        summary = f"{len(value)} item{'s' if len(value) != 1 else ''}"
    else:
        summary = type(value).__name__
    size = len(text.encode())
    size_label = f"{size} bytes" if size < 10_000 else f"{size / 1024:.0f} KiB"
    return format_html(
        '<details class="json-block"{}><summary>{} ({})</summary><pre class="json">{}</pre></details>',
        " open" if len(text) <= open_up_to else "",
        summary,
        size_label,
        text,
    )


class StoredFileAdminMixin:
    """A row's stored file, shown as a link to this admin, which streams it to whoever may see the row.

    Not Django's own rendering of a FileField (`FieldFile.url`): on object storage that is a
    presigned link, a credential that works for anyone who holds it, past any role check.
    Put `stored_file_link` in readonly_fields in place of the file field.
    """

    stored_file_size_field = "size_bytes"

    def get_urls(self):
        meta = self.model._meta
        view = self.admin_site.admin_view(self.stored_file_view)
        name = f"{meta.app_label}_{meta.model_name}_file"
        return [path("<path:object_id>/file/", view, name=name), *super().get_urls()]

    def stored_file_view(self, request, object_id):
        from apps.core.artifact_storage import stored_file_response

        obj = self.get_object(request, object_id)  # None where the row is not this user's to see
        if obj is None or not self.has_view_permission(request, obj) or not obj.file:
            raise Http404("No such file.")
        return stored_file_response(
            obj.file.name,
            size=getattr(obj, self.stored_file_size_field),
            content_type=getattr(obj, "content_type", "") or "application/octet-stream",
            filename=getattr(obj, "name", "") or PurePosixPath(obj.file.name).name,
            as_attachment=True,
        )

    @admin.display(description="file")
    def stored_file_link(self, obj):
        if obj is None or obj.pk is None or not obj.file:
            return "-"
        meta = self.model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_file", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.file.name)
