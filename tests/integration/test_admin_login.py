"""The admin login locks out guessing (django-axes); its records are for superusers only."""

import pytest
from django.contrib.auth.models import Permission

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


def _login(client, username: str, password: str, address: str = "192.0.2.10"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def test_thirty_wrong_passwords_then_the_right_one_is_refused_with_a_lockout_page(client):
    UserFactory(username="ops", password="the right password", is_staff=True)

    for _ in range(30):
        assert _login(client, "ops", "a wrong guess").status_code in (200, 429)
    response = _login(client, "ops", "the right password")

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session, "the right password after 30 wrong ones must not log in"
    html = response.content.decode()
    assert response["Content-Type"].startswith("text/html")
    assert "Too many failed login attempts" in html and "Traceback" not in html
    assert client.get("/admin/").status_code == 302, "still not logged in"


def test_the_lockout_is_per_username_and_address(client):
    UserFactory(username="ops", password="the right password", is_staff=True)
    UserFactory(username="other", password="another right password", is_staff=True)
    for _ in range(10):
        _login(client, "ops", "a wrong guess")

    # The same user from another address, and another user from the same address, still log in.
    assert _login(client, "ops", "the right password", address="192.0.2.99").status_code == 302
    client.logout()
    assert _login(client, "other", "another right password").status_code == 302


def test_a_few_wrong_passwords_do_not_lock_out_and_success_resets_the_count(client, settings):
    UserFactory(username="ops", password="the right password", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "ops", "a typo").status_code == 200
    assert _login(client, "ops", "the right password").status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "ops", "a typo").status_code == 200
    assert _login(client, "ops", "the right password").status_code == 302


@pytest.mark.parametrize("model", ["accessattempt", "accesslog", "accessfailurelog"])
def test_login_records_are_visible_to_superusers_only(client, model):
    staff = UserFactory(is_staff=True)
    # Even holding every axes model permission, staff who are not superusers see nothing of it.
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="axes"))
    client.force_login(staff)
    assert client.get(f"/admin/axes/{model}/").status_code == 403
    assert "/admin/axes/" not in client.get("/admin/").content.decode()

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    assert client.get(f"/admin/axes/{model}/").status_code == 200
