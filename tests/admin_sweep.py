"""Walk every ModelAdmin of an admin site as one staff user and report what crosses the tenant boundary.

Used by tests/integration/test_admin_tenant_sweep.py on the real site (no violation allowed)
and on a copy with one deliberately unscoped admin (the sweep must catch it). It iterates
the site's registry, so an admin registered later is swept without anyone adding it here.
"""

import json
import re
from dataclasses import dataclass, field

import numpy as np
from django.contrib.admin import AdminSite
from django.db.models import Model
from django.urls import NoReverseMatch, reverse

from apps.accounts.models import Membership, Organization, Role, User
from apps.core.admin import OrganizationScopedAdmin, PlatformAdmin

# Every name of the other organization's rows contains this, so any leak of a row, a choice or
# a filter entry shows up in the page text.
MARK = "zqx9w7"  # long enough never to turn up by chance in a random token (CSRF)
VECTOR = [1.0] + [0.0] * 383
NOT_FOUND_NOTICE = re.compile(r"with ID \u201c[^\u201d]*\u201d doesn\u2019t exist")


@dataclass
class World:
    home: Organization
    away: Organization
    forbidden: set[str] = field(default_factory=set)  # strings no page for a home staff user may contain


def build_world(tmp_path) -> World:
    """Two organizations with a row of every tenant model; the away one's names all carry MARK."""
    from apps.accounts.services import api_token_create, invitation_create, organization_quota_set
    from apps.agents.services import agent_create, memory_create, scenario_create
    from apps.jobs.services import artifact_upload, job_submit, worker_host_register
    from apps.jobs.services.schedules import schedule_create
    from apps.registry.services import model_version_promote, model_version_upload
    from tests.factories import MembershipFactory, OrganizationFactory
    from workers.testing_models import build_test_model

    world = World(home=OrganizationFactory(slug="home-org"), away=OrganizationFactory(slug=f"{MARK}-away"))
    for organization, tag in ((world.home, "home"), (world.away, MARK)):
        owner = MembershipFactory(organization=organization, role=Role.OWNER, user__username=f"{tag}-owner")
        developer = MembershipFactory(organization=organization, role=Role.DEVELOPER, user__username=f"{tag}-dev")
        token = api_token_create(membership=developer, name=f"{tag}-token").token
        job, _ = job_submit(membership=developer, kind="sleep", params={}, idempotency_key=f"{tag}-key")
        np.savez(tmp_path / f"{tag}.npz", x=np.zeros((2, 3), dtype=np.float32))
        upload, _ = artifact_upload(membership=developer, source=tmp_path / f"{tag}.npz", name=f"{tag}-inputs.npz")
        model_file = build_test_model("multi_io", tmp_path / f"{tag}.onnx", seed=len(tag))
        version, _ = model_version_upload(membership=developer, name=f"{tag}-model", source=model_file)
        model_version_promote(membership=owner, version=version, stage="production")
        agent = agent_create(membership=developer, name=f"{tag}-agent", kind="research", embedding=VECTOR)
        memory_create(membership=developer, agent=agent, text=f"{tag} memory", embedding=VECTOR)
        scenario_create(membership=developer, name=f"{tag}-scenario", spec={"rounds": 5})
        schedule_create(membership=developer, name=f"{tag}-schedule", kind="sleep", params={}, interval_seconds=3600)
        organization_quota_set(organization=organization, actor=owner.user, gpu_seconds_per_day=3600)
        invitation_create(actor=owner, username=f"{tag}-invitee", role=Role.VIEWER)
        if organization == world.away:
            world.forbidden |= {MARK, str(job.id), str(upload.id), token.prefix, version.sha256}
    worker_host_register(hostname="cpu@shared-host", queues=["cpu"], capabilities={}, version="test", pid=1)
    return world


def make_home_staff(world: World, role: str) -> User:
    """A staff user (not superuser) with every Django model permission, holding `role` in the home organization."""
    from django.contrib.auth.models import Permission

    from tests.factories import MembershipFactory

    membership = MembershipFactory(organization=world.home, role=role, user__username=f"staff-{role}")
    user = membership.user
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(*Permission.objects.all())
    return user


def rows_of(model_admin, organization: Organization) -> list[Model]:
    """The rows an admin shows that belong to `organization` (platform admins: every row, or the org's users)."""
    model = model_admin.model
    if isinstance(model_admin, OrganizationScopedAdmin):
        path = model_admin.organization_path or "pk"
        return list(model._default_manager.filter(**{path: organization.pk}))
    if issubclass(model, User):
        return list(model._default_manager.filter(memberships__organization=organization))
    if any(f.related_model is Organization for f in model._meta.get_fields() if f.is_relation):
        name = next(f.name for f in model._meta.get_fields() if f.is_relation and f.related_model is Organization)
        return list(model._default_manager.filter(**{name: organization}))
    return list(model._default_manager.all())


def snapshot(site: AdminSite, organization: Organization) -> dict[str, str]:
    """Everything of `organization` the admin could change, as comparable text (plus its memberships' users)."""
    state = {}
    for model_admin in site._registry.values():
        label = model_admin.model._meta.label
        rows = sorted(rows_of(model_admin, organization), key=lambda row: str(row.pk))
        values = [model_admin.model._default_manager.filter(pk=row.pk).values().first() for row in rows]
        state[label] = json.dumps(values, default=str, sort_keys=True)
    users = User.objects.filter(memberships__organization=organization).order_by("pk").values()
    state["users"] = json.dumps(list(users), default=str, sort_keys=True)
    state["memberships"] = json.dumps(
        list(Membership.objects.filter(organization=organization).order_by("pk").values()), default=str
    )
    return state


def _url(site: AdminSite, model, view: str, *args) -> str | None:
    try:
        return reverse(f"{site.name}:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)
    except NoReverseMatch:
        return None


def sweep(client, site: AdminSite, world: World) -> list[str]:
    """Visit every admin page a staff user could reach; return each way the other organization showed through."""
    violations: list[str] = []

    def check(response, what: str, *, may_show: bool = True) -> None:
        # Django's notice that an asked-for id does not exist only repeats the id that was asked for.
        text = NOT_FOUND_NOTICE.sub("", response.content.decode(errors="replace"))
        leaked = sorted(needle for needle in world.forbidden if needle in text)
        if leaked:
            violations.append(f"{what}: shows {leaked}")
        if not may_show and response.status_code == 200:
            violations.append(f"{what}: answers 200 for the other organization's row")

    for model, model_admin in site._registry.items():
        label = model._meta.label
        if not isinstance(model_admin, OrganizationScopedAdmin | PlatformAdmin):
            violations.append(f"{label}: registered without the tenant scoping mechanism")
        changelist = _url(site, model, "changelist")
        check(client.get(changelist), f"{label} changelist")
        for spec in model_admin.list_filter:
            name = spec[0] if isinstance(spec, tuple | list) else spec
            if isinstance(name, str) and name.split("__")[0] == "organization":
                check(client.get(changelist, {f"{name}__id__exact": world.away.pk}), f"{label} filtered to away")
        if _url(site, model, "add"):
            check(client.get(_url(site, model, "add")), f"{label} add form")
        theirs = rows_of(model_admin, world.away)
        for row in theirs:
            for view in ("change", "history", "delete"):
                url = _url(site, model, view, row.pk)
                if url:
                    check(client.get(url), f"{label} {view} of {row.pk}", may_show=False)
            if _url(site, model, "delete", row.pk):
                client.post(_url(site, model, "delete", row.pk), {"post": "yes"})
        if theirs:
            selected = [str(row.pk) for row in theirs]
            for action in [*(model_admin.actions or []), "delete_selected"]:
                name = action if isinstance(action, str) else action.__name__
                check(
                    client.post(changelist, {"action": name, "_selected_action": selected, "post": "yes"}),
                    f"{label} action {name}",
                )
        for name, url in _custom_urls(site, model_admin, theirs):
            # An admin's own views (live status, buttons, files): asked for the other organization's rows.
            check(client.get(url), f"{label} {name} GET", may_show=not _names_a_row(url, theirs))
            check(client.post(url), f"{label} {name} POST", may_show=not _names_a_row(url, theirs))
        for source_field in model_admin.autocomplete_fields:
            params = {"app_label": model._meta.app_label, "model_name": model._meta.model_name}
            for term in ("", MARK):
                response = client.get(
                    reverse(f"{site.name}:autocomplete"), {**params, "field_name": source_field, "term": term}
                )
                check(response, f"{label}.{source_field} autocomplete '{term}'")
    return violations


DJANGO_VIEWS = ("changelist", "add", "history", "delete", "change")


def _names_a_row(url: str, rows) -> bool:
    return any(f"/{row.pk}/" in url for row in rows)


def _custom_urls(site: AdminSite, model_admin, rows) -> list[tuple[str, str]]:
    """Every URL an admin adds to Django's own, filled with the rows' ids (path arguments, or `?id=`)."""
    prefix = f"{model_admin.model._meta.app_label}_{model_admin.model._meta.model_name}_"
    urls = []
    for pattern in model_admin.get_urls():
        name = pattern.name or ""
        if not name.startswith(prefix) or name.removeprefix(prefix) in DJANGO_VIEWS:
            continue
        arguments = list(pattern.pattern.converters)
        for row in rows:
            fixed = pattern.default_args or {}
            args = {argument: row.pk for argument in arguments if argument not in fixed}
            url = reverse(f"{site.name}:{name}", kwargs=args)
            urls.append((name, url if args else f"{url}?id={row.pk}"))
    return urls


def visible_own_rows(client, site: AdminSite, world: World) -> dict[str, int]:
    """How many of the home organization's rows each scoped admin shows (the sweep is not vacuous)."""
    seen = {}
    for model, model_admin in site._registry.items():
        if not isinstance(model_admin, OrganizationScopedAdmin):
            continue
        ours = rows_of(model_admin, world.home)
        seen[model._meta.label] = sum(
            client.get(_url(site, model, "change", row.pk)).status_code == 200 for row in ours
        )
    return seen
