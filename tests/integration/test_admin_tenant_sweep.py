"""The tenant sweep: every registered ModelAdmin, as a staff user of each role in organization A.

Walks changelists, list filters, add/change/delete/history pages, actions and autocomplete of
the whole admin registry (tests/admin_sweep.py) and asserts nothing of organization B shows
and nothing of B changes. An admin registered later is covered without editing this file; a
copy of the site with one unscoped admin proves the sweep would notice.
"""

import pytest
from django.contrib import admin

from apps.accounts.models import Role
from tests.admin_sweep import build_world, make_home_staff, snapshot, sweep, visible_own_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return build_world(tmp_path)


@pytest.mark.parametrize("role", Role.values)
def test_no_admin_page_shows_or_changes_another_organization(client, world, role):
    staff = make_home_staff(world, role)
    client.force_login(staff)
    before = snapshot(admin.site, world.away)

    violations = sweep(client, admin.site, world)
    for url in ("/admin/operations/", "/admin/operations/live/"):
        page = client.get(url).content.decode()
        violations += [f"{url} shows {needle}" for needle in world.forbidden if needle in page]

    assert violations == []
    assert snapshot(admin.site, world.away) == before
    if role == Role.OWNER:
        # Not vacuous: an owner sees the home organization's rows of every scoped admin.
        assert all(visible_own_rows(client, admin.site, world).values())


def test_the_sweep_catches_an_admin_registered_without_scoping(client, world, settings):
    settings.ROOT_URLCONF = "tests.urls.unscoped_admin"
    from tests.urls.unscoped_admin import site

    staff = make_home_staff(world, Role.OWNER)
    client.force_login(staff)

    violations = sweep(client, site, world)

    agent = [line for line in violations if line.startswith("agents.Agent")]
    assert "agents.Agent: registered without the tenant scoping mechanism" in agent
    assert any("shows" in line for line in agent), violations
    assert all(line.startswith("agents.Agent") for line in violations), violations
