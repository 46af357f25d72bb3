"""pytest: real PostgreSQL+pgvector and a real broker, like development."""

import os
from urllib.parse import urlsplit, urlunsplit

from apps.core import devservices
from project.settings.local import *  # noqa: F403
from project.settings.local import cache_config, env

# Redis database 15 keeps test messages away from a `make run` on the same server.
# RABBITMQ_URL runs the same suite against RabbitMQ instead (`make test-rabbitmq`).
CELERY_BROKER_URL = (
    env.str("RABBITMQ_URL", default="") or env.str("CELERY_BROKER_URL", default="") or devservices.broker_url(db=15)
)
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_URL = urlunsplit(urlsplit(CELERY_BROKER_URL)._replace(path="/15"))
# Celery prefers the CELERY_BROKER_URL environment variable to settings: make the two agree,
# here and in the worker processes the tests start (they inherit the environment).
os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
# Throttle counters in their own database (14), emptied before each test (tests/conftest.py).
CACHES = {
    "default": cache_config(CELERY_BROKER_URL.rsplit("/", 1)[0] + "/14")
    if CELERY_BROKER_URL.startswith("redis")
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}
# Hashing cost is irrelevant to what the tests check and dominates user creation.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": STORAGES["default"],  # noqa: F405 (ARTIFACT_STORAGE_URL's, from the base settings)
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
