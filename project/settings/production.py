"""Production: every secret and URL must be given; refuses to start otherwise."""

from project.settings.base import *  # noqa: F403
from project.settings.base import cache_config, database_config, env

SECRET_KEY = env.str("SECRET_KEY")
DATABASES = {"default": database_config(env.str("DATABASE_URL"))}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# /healthz, /readyz and /metrics are probed and scraped over plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

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
