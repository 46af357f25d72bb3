"""Settings shared by every environment; every value that varies comes from the environment."""

from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from apps.core import devservices, stack, storage_url

BASE_DIR = Path(__file__).resolve().parents[2]
env = environ.Env()

# Off unless asked for: a forgotten DEBUG=1 in production leaks settings and tracebacks.
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Registers OpClass for index expressions (the halfvec HNSW indexes of apps.agents).
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    # Swagger UI and Redoc served from our own static files: /api/docs/ works offline and under the CSP.
    "drf_spectacular_sidecar",
    # Admin login lockout (AccessAttempt rows in PostgreSQL), docs/decisions/0015.
    "axes",
    "csp",
    "apps.core",
    "apps.accounts",
    "apps.jobs",
    "apps.registry",
    "apps.agents",
    "apps.operations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "apps.core.headers.ApiNoStoreMiddleware",
    "apps.core.logs.RequestLogContextMiddleware",
    # Inside the request id's context: every error under /api/ becomes the JSON shape.
    "apps.core.api.ApiErrorMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

# --- Admin login lockout (django-axes, docs/decisions/0015) ----------------------------------
# AxesStandaloneBackend first: it refuses a locked-out username+address before any password check.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After this many failed logins for one username from one address, that pair is refused
# (429, templates/admin/lockout.html) until the cool-off has passed since the last failure.
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
# Username and address together: a guesser locks out only their own address for that user,
# never the real user logging in from elsewhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/lockout.html"
AXES_ENABLE_ACCESS_FAILURE_LOG = True
# Not verbose: otherwise every process, each `manage.py` command included, logs a start banner;
# lockouts are still logged (warning) with the username and address.
AXES_VERBOSE = False
# Its admin pages are registered by apps/accounts/admin.py, superusers only.
AXES_ENABLE_ADMIN = False

# --- Content-Security-Policy (django-csp, docs/decisions/0016) -------------------------------
# No inline or evaluated script anywhere, nothing from another host. Inline styles stay
# allowed: Swagger UI, Django's own change list and our admin displays use them.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        # Swagger UI draws its icons from data: URIs.
        "img-src": [SELF, "data:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Under the stack's data dir (`.data/` or SWITCHYARD_DATA_DIR), like everything else it writes.
STATIC_ROOT = env.path("STATIC_ROOT", default=devservices.DATA_DIR / "static")
MEDIA_ROOT = env.path("MEDIA_ROOT", default=devservices.DATA_DIR / "media")
# Where every stored file lives (uploads, models, import files, job outputs), for every host:
# unset = the local disk under MEDIA_ROOT; file:///abs/path; s3://bucket/prefix?endpoint_url=...
# (apps/core/storage_url.py, docs/decisions/0045). A bad URL stops the process here.
ARTIFACT_STORAGE_URL = env.str("ARTIFACT_STORAGE_URL", default="")
try:
    _ARTIFACT_STORAGE = storage_url.storage_config(ARTIFACT_STORAGE_URL)
except storage_url.StorageUrlError as exc:
    raise ImproperlyConfigured(str(exc)) from None
STORAGES = {
    "default": _ARTIFACT_STORAGE,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# This host's own folder for stored files it needs on disk (copies by sha256, reused across jobs)
# and for outputs being written before they are stored; copies beyond the bound go, oldest use first.
ARTIFACT_CACHE_DIR = env.path("ARTIFACT_CACHE_DIR", default=devservices.DATA_DIR / "artifact-cache")
ARTIFACT_CACHE_MAX_BYTES = env.int("ARTIFACT_CACHE_MAX_BYTES", default=20 * 1024**3)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def cache_config(url: str) -> dict:
    """The default cache (throttle counters). A Redis that stops answering must cost a request
    at most a second, not redis-py's default 5 s: the throttle then decides locally."""
    config = env.cache_url_config(url)
    if config["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
        config.setdefault("OPTIONS", {}).update(socket_connect_timeout=1.0, socket_timeout=1.0)
    return config


def database_config(url: str) -> dict:
    config = env.db_url_config(url)
    # Short-lived web requests reuse connections; health checks drop dead ones.
    config.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
    config["CONN_HEALTH_CHECKS"] = True
    config.setdefault("OPTIONS", {}).setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5))
    return config


REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "apps.accounts.scopes.TokenScopePermission",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "apps.core.api.exception_handler",
    # JSON bodies only; the upload endpoints (artifacts, models, memory imports) declare
    # multipart themselves. A form-encoded body elsewhere answers 415.
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.JSONBodyParser"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.accounts.throttling.TokenRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api": env.str("API_RATE_LIMIT", default="100/minute")},
}
# Failed token authentications per client address (REMOTE_ADDR) before that address gets 429
# without its token being checked; counted like API_RATE_LIMIT (apps/accounts/throttling.py).
API_AUTH_FAILURE_RATE = env.str("API_AUTH_FAILURE_RATE", default="20/minute")
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchyard API",
    "DESCRIPTION": "Jobs for AI workloads: inference, compilation, simulation and sandbox runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # 3.1: nullable fields are JSON Schema's own `type: [..., "null"]`, so a response can be
    # checked against the schema with plain jsonschema (tests/contract.py).
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.core.openapi.document_errors",
    ],
}

# --- Celery (queues, routes and reliability live in project/queues.py) ---------------
CELERY_BROKER_URL = ""  # set per environment
# What sandbox hosts connect with: a broker user that can consume `sandbox` and write
# `sandbox_reports`, nothing else (docs/operations.md, "Sandbox hosts"). Only the Procfile's
# sandbox worker and the tests' sandbox workers use it; empty means CELERY_BROKER_URL.
SANDBOX_BROKER_URL = env.str("SANDBOX_BROKER_URL", default="")
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=5.0)
# Celery's Django fixup closes every database connection before and after each task
# unless this is set: a new scram-sha-256 login per job cut the job path to a third of
# its throughput (`manage.py bench jobs`). CONN_MAX_AGE and health checks still apply.
# The submit, claim and finish statements are prepared once per database session
# (apps/core/db.py); turn off behind a pooler in transaction mode.
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# The admin's and root page's Flower links: where the Procfile starts Flower (FLOWER_ADDRESS,
# FLOWER_PORT) unless FLOWER_URL says otherwise (a proxy, another host).
FLOWER_URL = env.str("FLOWER_URL", default="") or stack.flower_url()

# --- Operations (docs/operations.md) ------------------------------------------------------
# /metrics answers a matching `Authorization: Bearer <METRICS_TOKEN>`, or a client whose
# REMOTE_ADDR is in one of these networks; anyone else gets 401.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"])
# The multi-host test harness's topology file (tests/multihost): which network cable is whose.
# `manage.py chaos --drills partition` cuts cables named there; unset, that drill is skipped.
CHAOS_NETNS_TOPOLOGY = env.str("CHAOS_NETNS_TOPOLOGY", default="")

# JSON lines by default (web and workers alike); LOG_FORMAT=plain for reading by eye.
# Context passed as `extra=` (job_id, kind, attempt, ...) and the Celery task id appear in both.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"task_context": {"()": "apps.core.logs.TaskContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "plain": {"()": "apps.core.logs.PlainFormatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="json"),
            "filters": ["task_context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- Jobs (see docs/jobs.md) ------------------------------------------------------------
# A running job's lease; the worker renews it every JOBS_HEARTBEAT_SECONDS, and the reaper
# returns a job whose lease expired (its worker died) to the queue.
JOBS_LEASE_SECONDS = env.float("JOBS_LEASE_SECONDS", default=60.0)
JOBS_HEARTBEAT_SECONDS = env.float("JOBS_HEARTBEAT_SECONDS", default=JOBS_LEASE_SECONDS / 3)
# A sandbox job (its message carries the program) queued this long without a claim is
# published again (its message may be lost, e.g. a flushed broker); a duplicate is refused
# by the claim. Jobs that workers pull are rung instead (JOBS_RING_INTERVAL_SECONDS).
JOBS_REDISPATCH_AFTER_SECONDS = env.float("JOBS_REDISPATCH_AFTER_SECONDS", default=300.0)
JOBS_REAPER_INTERVAL_SECONDS = env.float("JOBS_REAPER_INTERVAL_SECONDS", default=15.0)
# Doorbells: every this many seconds one leader rings each pulled queue (cpu, gpu) once per
# eligible job that has no doorbell waiting in the broker, at most JOBS_RING_MAX_PER_QUEUE.
JOBS_RING_INTERVAL_SECONDS = env.float("JOBS_RING_INTERVAL_SECONDS", default=2.0)
JOBS_RING_MAX_PER_QUEUE = env.int("JOBS_RING_MAX_PER_QUEUE", default=1000)
# A doorbell is a turn: its worker runs eligible jobs back to back for up to this long, then
# rings again if work is left. With this many doorbells already waiting for a queue, a new
# job gets none of its own (apps/jobs/services/dispatch.py): the waiting turns will reach it.
# The most jobs one bulk submit may carry (POST /api/v1/jobs/bulk, `jobs submit --from-file`).
JOBS_BULK_MAX = env.int("JOBS_BULK_MAX", default=1000)
JOBS_DOORBELL_TURN_SECONDS = env.float("JOBS_DOORBELL_TURN_SECONDS", default=1.0)
# A turn that finds nothing eligible after a job looks again for this long before it ends
# (one claim per look, pauses doubling from 2 ms): jobs submitted one at a time then share a
# turn instead of each getting a doorbell. 0 ends a turn at its first empty claim.
JOBS_DOORBELL_LINGER_SECONDS = env.float("JOBS_DOORBELL_LINGER_SECONDS", default=0.05)
# Keep it at least the number of worker processes that consume a queue, so every one gets a turn.
JOBS_DOORBELLS_AHEAD = env.int("JOBS_DOORBELLS_AHEAD", default=64)
# Fair share: an organization's recent cost on a queue (wall seconds of its attempts) halves
# every this many seconds; the claim prefers whoever is furthest below their weighted share.
JOBS_FAIR_SHARE_HALF_LIFE_SECONDS = env.float("JOBS_FAIR_SHARE_HALF_LIFE_SECONDS", default=300.0)
JOBS_WORKER_HEARTBEAT_SECONDS = env.float("JOBS_WORKER_HEARTBEAT_SECONDS", default=15.0)
JOBS_WORKER_ALIVE_SECONDS = env.float("JOBS_WORKER_ALIVE_SECONDS", default=60.0)
JOBS_PROGRESS_MIN_INTERVAL_SECONDS = env.float("JOBS_PROGRESS_MIN_INTERVAL_SECONDS", default=1.0)
# Admission control: submit answers 503 + Retry-After past this many queued jobs per queue.
JOBS_QUEUE_MAX_BACKLOG = env.int("JOBS_QUEUE_MAX_BACKLOG", default=10000)
# ... and past this many of one organization's queued jobs per queue, for that organization
# only: a flood meets its own cap first instead of filling the queue for everyone.
JOBS_ORGANIZATION_MAX_BACKLOG = env.int("JOBS_ORGANIZATION_MAX_BACKLOG", default=5000)
JOBS_RETRY_BACKOFF_SECONDS = env.float("JOBS_RETRY_BACKOFF_SECONDS", default=2.0)
JOBS_RETRY_BACKOFF_MAX_SECONDS = env.float("JOBS_RETRY_BACKOFF_MAX_SECONDS", default=300.0)

# --- Organization quotas (apps/jobs/quotas.py); an OrganizationQuota row overrides them ----
# Active (queued, running, cancelling) jobs per kind at once; a kind not named is unlimited
# here and bounded only by the queue backlog above.
ORGANIZATION_QUOTA_DEFAULTS = {
    "concurrent_jobs": {"sandbox": 32, "inference": 200, "compile": 8, "simulation": 32},
    # Jobs running at once per queue (cpu, gpu), enforced by the claim; unset: no limit.
    "running_jobs": {},
    # Jobs of a kind started (claimed) in any 60 s, enforced by the claim; unset: no limit.
    "starts_per_minute": {},
    # Caps on what a sandbox run may ask for; unset caps are the system maxima.
    "sandbox_limits": {},
    # Wall-clock seconds of gpu-queue jobs started per UTC day; None is unlimited.
    "gpu_seconds_per_day": env.int("QUOTA_GPU_SECONDS_PER_DAY", default=None),
}

# --- Accounts -----------------------------------------------------------------------------
# How long an invitation to join an organization can be accepted (apps/accounts/services.py).
INVITATION_TTL_DAYS = env.int("INVITATION_TTL_DAYS", default=7)

# --- Schedules and retention (apps/jobs/services/schedules.py, retention.py) ------
# How often beat runs the schedule dispatcher; a schedule fires within about this much of its time.
SCHEDULES_DISPATCH_INTERVAL_SECONDS = env.float("SCHEDULES_DISPATCH_INTERVAL_SECONDS", default=1.0)
# A `skip` schedule fires a late period only if it is at most this late and no later period
# is due too; past that the period was missed (the dispatcher was down) and is skipped.
SCHEDULES_MISFIRE_GRACE_SECONDS = env.float("SCHEDULES_MISFIRE_GRACE_SECONDS", default=30.0)
# The shortest interval a schedule may have, and the most schedules per organization.
SCHEDULES_MIN_INTERVAL_SECONDS = env.int("SCHEDULES_MIN_INTERVAL_SECONDS", default=10)
SCHEDULES_MAX_PER_ORGANIZATION = env.int("SCHEDULES_MAX_PER_ORGANIZATION", default=100)
# Finished jobs (with their events and files) older than this are pruned; an organization's
# quota (`job_retention_days`) overrides it. Audit rows are kept longer, on their own clock.
JOBS_RETENTION_DAYS = env.int("JOBS_RETENTION_DAYS", default=30)
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=365)
# A worker not heard from for this long loses its WorkerHost row at the next prune.
WORKER_HOSTS_RETENTION_DAYS = env.int("WORKER_HOSTS_RETENTION_DAYS", default=7)
# Rows per DELETE statement (one short transaction each), so pruning never holds the job path.
PRUNE_BATCH_SIZE = env.int("PRUNE_BATCH_SIZE", default=1000)
# Seconds between two batches: a batch of 1,000 jobs keeps a database core busy ~0.2 s, and the
# job path shares that core (docs/benchmarks.md, `bench prune`).
PRUNE_BATCH_PAUSE_SECONDS = env.float("PRUNE_BATCH_PAUSE_SECONDS", default=0.2)
PRUNE_INTERVAL_SECONDS = env.float("PRUNE_INTERVAL_SECONDS", default=3600.0)
# A stored file under artifacts/ that no row names is removed once it is this old: a
# running job writes its files before it records them, and no job runs longer than 3 h.
PRUNE_ORPHAN_MIN_AGE_SECONDS = env.float("PRUNE_ORPHAN_MIN_AGE_SECONDS", default=6 * 3600.0)

CELERY_BEAT_SCHEDULE = {
    "ring-queues": {
        "task": "jobs.ring",
        "schedule": JOBS_RING_INTERVAL_SECONDS,
        "options": {"expires": JOBS_RING_INTERVAL_SECONDS},
    },
    "reap-jobs": {
        "task": "jobs.reap",
        "schedule": JOBS_REAPER_INTERVAL_SECONDS,
        # A reaper run that waited longer than its interval is stale: the next one is coming.
        "options": {"expires": JOBS_REAPER_INTERVAL_SECONDS},
    },
    "dispatch-schedules": {
        "task": "jobs.dispatch_schedules",
        "schedule": SCHEDULES_DISPATCH_INTERVAL_SECONDS,
        "options": {"expires": SCHEDULES_DISPATCH_INTERVAL_SECONDS},
    },
    "prune": {
        "task": "jobs.prune",
        "schedule": PRUNE_INTERVAL_SECONDS,
        "options": {"expires": PRUNE_INTERVAL_SECONDS},
    },
}

# --- Model registry ----------------------------------------------------------------------
# Per compile target, over the defaults in workers/compile.py: {"cpu-int8": {"min_cosine": 0.995}}.
COMPILE_TOLERANCES = env.json("COMPILE_TOLERANCES", default={})
REGISTRY_MAX_MODEL_BYTES = env.int("REGISTRY_MAX_MODEL_BYTES", default=512 * 1024 * 1024)
# Request bodies other than files. Inline inference inputs may hold 1,000,000 values
# (apps/registry/inference_kind.py); as JSON a float takes up to ~25 bytes with its
# separator, so 1M values need ~25 MB. Larger batches go as an uploaded .npy/.npz.
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # larger uploads go to a temporary file

# --- Agents and vectors ------------------------------------------------------------------
# Fixed when the agents migrations first run: the vector columns are created with it.
AGENTS_EMBEDDING_DIM = env.int("AGENTS_EMBEDDING_DIM", default=384)
# HNSW candidates per search: 100 measured recall@10 0.97-0.98 at p50 4.1-4.5 ms on 100k x 384 with the halfvec
# index (64: 0.95-0.96, 3.0-3.5 ms), docs/benchmarks.md.
AGENTS_SEARCH_EF_SEARCH = env.int("AGENTS_SEARCH_EF_SEARCH", default=100)
AGENTS_IMPORT_MAX_BYTES = env.int("AGENTS_IMPORT_MAX_BYTES", default=64 * 1024 * 1024)
AGENTS_IMPORT_MAX_ROWS = env.int("AGENTS_IMPORT_MAX_ROWS", default=200_000)
# --- Simulations -------------------------------------------------------------------------
# A sweep's grid points x replications; each is a child job on `cpu`.
SIMULATION_SWEEP_MAX_CHILDREN = env.int("SIMULATION_SWEEP_MAX_CHILDREN", default=500)
# Agents in one run: the engine works on dense n x n matrices (1000 agents: ~8 MB each).
SIMULATION_MAX_AGENTS = env.int("SIMULATION_MAX_AGENTS", default=2000)
# Agents and memories both have a `kind` choice field; name their enums in the schema.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    **SPECTACULAR_SETTINGS.get("ENUM_NAME_OVERRIDES", {}),
    "AgentKindEnum": "apps.agents.models.AgentKind",
    "MemoryKindEnum": "apps.agents.models.MemoryKind",
    "InvitationStatusEnum": "apps.accounts.models.Invitation.Status",
    "JobStatusEnum": "apps.jobs.models.JobStatus",
    "CatchUpEnum": "apps.jobs.models.CatchUp",
}


# How long an Idempotency-Key keeps returning its job (docs/decisions/0025); then it may make a new one.
IDEMPOTENCY_KEY_TTL_S = env.int("IDEMPOTENCY_KEY_TTL_S", default=24 * 3600)

# Uploaded job inputs (.npy/.npz for inference batches), POST /api/v1/artifacts/.
ARTIFACTS_MAX_UPLOAD_BYTES = env.int("ARTIFACTS_MAX_UPLOAD_BYTES", default=2 * 1024 * 1024 * 1024)
