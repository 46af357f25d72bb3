"""A worker's connection between jobs: no health-check round trip right after a job, one after idling or an error."""

import pytest
from django.db import connection

from apps.core import db

# Outside a test transaction: Django's close_if_unusable_or_obsolete acts only in autocommit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _health_checks_on():
    connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 0")


def test_a_connection_that_just_ran_a_job_skips_the_health_check():
    db.mark_connections_used()
    db.close_old_connections_between_jobs()
    assert connection.health_check_done


def test_an_idle_connection_is_checked_again(monkeypatch):
    db.mark_connections_used()
    monkeypatch.setattr(db, "RECENTLY_USED_S", 0.0)
    db.close_old_connections_between_jobs()
    assert not connection.health_check_done


def test_a_connection_that_saw_an_error_is_checked_again():
    db.mark_connections_used()
    connection.errors_occurred = True
    db.close_old_connections_between_jobs()
    # Not skipped: Django's own check ran (SELECT 1), found the connection usable, cleared the flag.
    assert not connection.errors_occurred and connection.health_check_done
