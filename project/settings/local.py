"""Development: the embedded PostgreSQL and Redis under .data/ unless URLs are given."""

from apps.core import devservices
from project.settings.base import *  # noqa: F403
from project.settings.base import database_config, env

SECRET_KEY = env.str("SECRET_KEY", default="") or devservices.secret_key()
DATABASES = {"default": database_config(env.str("DATABASE_URL", default="") or devservices.database_url())}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or devservices.broker_url()
