"""project/flowerconfig.py as Flower reads it: executed as a file, its names become options."""

import runpy
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).resolve().parents[2] / "project" / "flowerconfig.py")


def load(monkeypatch, **env) -> dict:
    for name in (
        "FLOWER_BASIC_AUTH",
        "FLOWER_AUTH",
        "FLOWER_DB",
        "FLOWER_BROKER_API",
        "CELERY_BROKER_URL",
        "SWITCHYARD_DATA_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(CONFIG)


def test_flower_refuses_to_start_without_authentication(monkeypatch):
    with pytest.raises(SystemExit, match="FLOWER_BASIC_AUTH"):
        load(monkeypatch, CELERY_BROKER_URL="redis://:pw@127.0.0.1:6379/0")


def test_basic_auth_persistent_state_and_redis_needs_no_broker_api(monkeypatch):
    options = load(monkeypatch, FLOWER_BASIC_AUTH="admin:s3cret,ops:other", CELERY_BROKER_URL="redis://:pw@r:6379/0")
    assert options["basic_auth"] == ["admin:s3cret", "ops:other"]
    assert options["persistent"] is True and options["db"] == ".data/flower.db" and options["state_save_interval"] > 0
    assert options["broker_api"] is None


def test_rabbitmq_queue_lengths_come_from_its_management_api(monkeypatch):
    options = load(monkeypatch, FLOWER_BASIC_AUTH="a:b", CELERY_BROKER_URL="amqp://sy:pw@rabbit.internal:5672/jobs")
    # No credentials in the URL: Flower uses the broker's, and the URL may end up in logs.
    assert options["broker_api"] == "http://rabbit.internal:15672/api/"
    tls = load(monkeypatch, FLOWER_BASIC_AUTH="a:b", CELERY_BROKER_URL="amqps://sy:pw@rabbit:5671//")
    assert tls["broker_api"] == "https://rabbit:15672/api/"
    given = load(monkeypatch, FLOWER_BASIC_AUTH="a:b", FLOWER_BROKER_API="http://mgmt:8080/api/", FLOWER_DB="/d/f.db")
    assert given["broker_api"] == "http://mgmt:8080/api/" and given["db"] == "/d/f.db"
