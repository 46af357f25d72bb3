"""Development: the embedded PostgreSQL and Redis under .data/ unless URLs are given."""

from apps.core import devservices
from project.settings.base import *  # noqa: F403
from project.settings.base import cache_config, database_config, env

SECRET_KEY = env.str("SECRET_KEY", default="") or devservices.secret_key()
DATABASES = {"default": database_config(env.str("DATABASE_URL", default="") or devservices.database_url())}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or devservices.broker_url()

# Throttle counters must be shared by every web process: Redis (the broker's server, its
# own database) unless CACHE_URL says otherwise; per-process memory only without Redis.
CACHES = {
    "default": cache_config(
        env.str(
            "CACHE_URL",
            default=CELERY_BROKER_URL.rsplit("/", 1)[0] + "/1"
            if CELERY_BROKER_URL.startswith("redis")
            else "locmemcache://",
        )
    )
}
