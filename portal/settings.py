"""Django settings for the desktop portal.

Every setting that differs between machines comes from an environment variable
(django-environ), with defaults that work on a single machine. A value that cannot
be parsed stops start-up with ImproperlyConfigured naming the variable.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

from portal import envcheck, localredis

# Generic Django classes (ModelAdmin[Desktop], ...) as the type checker sees them, at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(envcheck.read(env.str, "PORTAL_DATA_DIR", default=str(BASE_DIR / "var")))
DEBUG = envcheck.flag(env, "DJANGO_DEBUG", default=False)
# Production mode: the portal sits behind a TLS-terminating proxy (see README "Deployment").
TLS = envcheck.flag(env, "PORTAL_TLS", default=False)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else from a local file made on first run."""
    from_env: str = env.str("SECRET_KEY", default="")
    if from_env:
        if len(from_env) < 50:
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters long")
        return from_env
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(64))
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = envcheck.read(
    env.list, "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"]
)
CSRF_TRUSTED_ORIGINS = envcheck.origins(
    envcheck.read(env.list, "CSRF_TRUSTED_ORIGINS", default=[]), "CSRF_TRUSTED_ORIGINS"
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "channels",
    "axes",
    "django_prometheus",
    "vms",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # request metrics, /metrics
    "django.middleware.security.SecurityMiddleware",
    "vms.web.middleware.BufferedStaticFilesMiddleware",  # WhiteNoise's files, unstreamed
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "vms.web.middleware.StaffOnlyAdminMiddleware",
    "vms.web.middleware.MethodNotAllowedPageMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

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
                "vms.web.context.roles",
                "vms.web.context.page_data",
            ],
        },
    },
]

# SQLite by default: WAL lets readers run beside the writer, and IMMEDIATE transactions
# take the write lock up front so concurrent writers queue instead of failing mid-way.
DATABASES = {
    "default": envcheck.database(
        envcheck.read(env.db_url, "DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Under ASGI every request runs on a thread of its own, and each thread opens its own
# connection: 50 concurrent requests meant 50 connections per process, and the bench ran
# PostgreSQL out of slots. A pool bounds them (requests beyond it wait for a free one).
# Only processes that never fork may pool (portal/asgi.py turns it on for the ASGI server):
# a pool's connections copied into a forked Celery or gateway child would share sockets.
DB_POOL_MAX_SIZE = envcheck.read(env.int, "DB_POOL_MAX_SIZE", default=0)
if DB_POOL_MAX_SIZE < 0:
    raise ImproperlyConfigured("DB_POOL_MAX_SIZE must be 0 (no pool) or a positive size")
if DB_POOL_MAX_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": envcheck.read(env.float, "DB_POOL_TIMEOUT_S", default=10.0),
    }
# Without a pool, close after each request unless a deployment sets DB_CONN_MAX_AGE
# knowingly (persistent connections per ASGI thread are what exhausted the slots).
DATABASES["default"]["CONN_MAX_AGE"] = (
    0 if DB_POOL_MAX_SIZE else envcheck.read(env.int, "DB_CONN_MAX_AGE", default=0)
)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset: the portal's own Redis on 127.0.0.1:6380, with the password the set-up generated
# (portal/localredis.py). The URL may carry a password: never log it.
REDIS_URL = envcheck.redis_url(
    envcheck.read(env.str, "REDIS_URL", default="") or localredis.url(db=0)
)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"  # picks the page by role (vms.web.pages.home)
# None: LogoutView renders registration/logged_out.html, which says the logout happened.
LOGOUT_REDIRECT_URL = None

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = DATA_DIR / "media"
MEDIA_URL = "media/"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "vms.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Desktop portal API",
    "DESCRIPTION": "Launch, control and reach virtual desktops.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Celery: the broker is Redis. Tasks acknowledge after they finish, so a worker killed
# mid-task leaves the message to be delivered again (tasks are idempotent).
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "portal"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
RECONCILE_INTERVAL_S = envcheck.read(env.int, "RECONCILE_INTERVAL_S", default=60)
# Each host's own worker samples it this often; a host with no heartbeat for
# HOST_DOWN_AFTER_S is marked down and its desktops are recovered on other hosts.
HOST_HEARTBEAT_INTERVAL_S = envcheck.read(env.int, "HOST_HEARTBEAT_INTERVAL_S", default=10)
HOST_DOWN_AFTER_S = envcheck.read(env.int, "HOST_DOWN_AFTER_S", default=30)
if HOST_HEARTBEAT_INTERVAL_S < 1 or HOST_DOWN_AFTER_S < 2 * HOST_HEARTBEAT_INTERVAL_S:
    raise ImproperlyConfigured(
        "HOST_HEARTBEAT_INTERVAL_S must be at least 1 and HOST_DOWN_AFTER_S at least twice it "
        "(one late heartbeat must not mark a host down)"
    )
# The disk lockspace of libvirt's lockd on the shared storage (`file_lockspace_dir` of every
# host's qemu-lockd.conf), as each host's worker sees it. Recovery restarts a lost host's
# desktop elsewhere only when its lease there is provably gone; a host whose running
# desktops hold no lease here takes no part in recovery (docs/fleet.md).
DISK_LOCKSPACE_DIR = envcheck.read(
    env.str, "DISK_LOCKSPACE_DIR", default="/var/lib/desktop-portal/lockspace"
)
# Live migration without libvirt's storage-safety check (VIR_MIGRATE_UNSAFE). Only for lab
# hosts, whose pool is one local directory that libvirt cannot know to be shared; on NFS
# libvirt finds the migration safe by itself (docs/fleet.md).
MIGRATION_ALLOW_UNSAFE = envcheck.read(env.bool, "MIGRATION_ALLOW_UNSAFE", default=False)
# Memory placement leaves free on a host beyond the desktop's own (the heartbeat's sample).
HOST_MEMORY_RESERVE_MIB = envcheck.read(env.int, "HOST_MEMORY_RESERVE_MIB", default=256)
# Audit events and closed console sessions older than this are removed (hourly, by the
# retention task, which records what it removed). 0: keep forever.
AUDIT_RETENTION_DAYS = envcheck.read(env.int, "AUDIT_RETENTION_DAYS", default=365)
if AUDIT_RETENTION_DAYS < 0:
    raise ImproperlyConfigured(
        "Environment variable AUDIT_RETENTION_DAYS must be 0 (keep forever) or more"
    )
CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "vms.tasks.reconcile_all_hosts", "schedule": RECONCILE_INTERVAL_S},
    "audit-retention": {"task": "vms.tasks.apply_audit_retention", "schedule": 3600},
    "host-heartbeat": {
        "task": "vms.tasks.heartbeat_all_hosts",
        "schedule": HOST_HEARTBEAT_INTERVAL_S,
    },
    "console-sessions": {"task": "vms.tasks.reap_console_sessions", "schedule": 30},
    "backups": {"task": "vms.tasks.backups_round", "schedule": 300},
    "thumbnails": {
        "task": "vms.tasks.refresh_thumbnails",
        "schedule": envcheck.read(env.int, "THUMBNAIL_INTERVAL_S", default=20),
    },
}

# Monitoring (docs/monitoring.md): each host's worker samples its desktops and itself this
# often; history is kept raw for METRICS_RAW_RETENTION_H, as 1-minute and 1-hour rollups
# for the days below; alerts fire above the thresholds (percent; minutes for a pinned CPU).
METRICS = {
    name: envcheck.read(env.float, f"METRICS_{name}", default=default)
    for name, default in {
        "SAMPLE_INTERVAL_S": 15.0, "RAW_RETENTION_H": 24.0, "MINUTE_RETENTION_DAYS": 7.0,
        "HOUR_RETENTION_DAYS": 90.0, "ALERT_HOST_CPU_PERCENT": 90.0,
        "ALERT_HOST_MEMORY_PERCENT": 90.0, "ALERT_DESKTOP_CPU_PERCENT": 95.0,
        "ALERT_DESKTOP_CPU_MINUTES": 10.0, "ALERT_POOL_PERCENT": 90.0,
    }.items()
}  # fmt: skip
if min(METRICS.values()) <= 0 or METRICS["SAMPLE_INTERVAL_S"] < 1:
    raise ImproperlyConfigured(
        "Environment variables METRICS_* must be positive (METRICS_SAMPLE_INTERVAL_S at least 1)"
    )
CELERY_BEAT_SCHEDULE["metrics-sample"] = {
    "task": "vms.tasks.metrics_sample_all_hosts", "schedule": METRICS["SAMPLE_INTERVAL_S"]
}  # fmt: skip
CELERY_BEAT_SCHEDULE["metrics-rollup"] = {"task": "vms.tasks.metrics_rollup", "schedule": 60}
# GET /metrics (Prometheus) wants "Authorization: Bearer <METRICS_TOKEN>"; empty: only
# callers on loopback (the client address, through trusted proxies) are answered.
METRICS_TOKEN = envcheck.token(
    envcheck.read(env.str, "METRICS_TOKEN", default=""), "METRICS_TOKEN", min_length=32
)

# /healthz shows each check's detail (host names, error text) to staff and to a monitor that
# sends "Authorization: Bearer <HEALTHZ_TOKEN>"; everyone else gets only ok/unavailable.
# Empty: no token access.
HEALTHZ_TOKEN = envcheck.token(
    envcheck.read(env.str, "HEALTHZ_TOKEN", default=""), "HEALTHZ_TOKEN", min_length=32
)
# A stranger's /healthz answer is the verdict of checks run at most this long ago (each web
# process runs them at most once per period, one request at a time).
HEALTHZ_CACHE_S = envcheck.read(env.int, "HEALTHZ_CACHE_S", default=5)
if not 1 <= HEALTHZ_CACHE_S <= 300:
    raise ImproperlyConfigured("Environment variable HEALTHZ_CACHE_S must be 1 to 300 (seconds)")

# Hypervisor defaults for the host that `scripts/run` registers on first start.
LIBVIRT_URI = envcheck.read(env.str, "LIBVIRT_URI", default="qemu:///system")
STORAGE_POOL_NAME = envcheck.read(env.str, "STORAGE_POOL_NAME", default="desktops")
STORAGE_POOL_PATH = envcheck.read(
    env.str, "STORAGE_POOL_PATH", default="/var/lib/desktop-portal/pool"
)
# Where desktop backups are written (a directory; NFS in production, mounted at the same
# path on every host, since each host's libvirt writes its desktops' backups there).
BACKUP_DIR = envcheck.read(env.str, "BACKUP_DIR", default="/var/lib/desktop-portal/backups")
# A cap on the disk copies of restores and template versions (MiB/s, 0: none), so that a
# restore does not starve the host's desktops of disk bandwidth.
DISK_COPY_BANDWIDTH_MIB_S = envcheck.read(env.int, "DISK_COPY_BANDWIDTH_MIB_S", default=0)
# How long the backups of a deleted desktop stay restorable (as a new desktop) before the
# backups round removes them; a live desktop's are kept by its template's `backup_keep`.
BACKUP_KEEP_DAYS_AFTER_DELETE = envcheck.read(env.int, "BACKUP_KEEP_DAYS_AFTER_DELETE", default=30)
# How many backups one user may ask for in 24 hours (over all their desktops; the
# templates' schedules are not counted). Backups also count in the disk quota.
BACKUPS_PER_USER_PER_DAY = envcheck.read(env.int, "BACKUPS_PER_USER_PER_DAY", default=10)
if BACKUPS_PER_USER_PER_DAY < 0:
    raise ImproperlyConfigured("BACKUPS_PER_USER_PER_DAY must be 0 or more (0: no requests).")
VIRT_TYPE = envcheck.choice(
    envcheck.read(env.str, "VIRT_TYPE", default="auto"), "VIRT_TYPE", ("auto", "kvm", "qemu")
)
# Prefix of every libvirt domain and volume the portal creates; reconcile only ever
# removes objects that carry it.
NAME_PREFIX = envcheck.read(env.str, "PORTAL_NAME_PREFIX", default="dp-")
GUEST_SHUTDOWN_TIMEOUT_S = envcheck.read(env.float, "GUEST_SHUTDOWN_TIMEOUT_S", default=30.0)
DEMO_GUEST_IMAGE = envcheck.read(
    env.str, "DEMO_GUEST_IMAGE", default="/var/lib/desktop-portal/images/demo-desktop.qcow2"
)
# The NAT network `desktops` that the first-run set-up creates for the demo template.
DESKTOPS_NETWORK_SUBNET = envcheck.read(env.str, "DESKTOPS_NETWORK_SUBNET", default="10.80.0.0/24")
# Directories from which admins may import base images (no path traversal elsewhere).
IMAGE_IMPORT_DIRS = envcheck.read(
    env.list, "IMAGE_IMPORT_DIRS", default=["/var/lib/desktop-portal/images"]
)
# The largest virtual size a template image may have: a bigger one would be a disk no
# desktop quota can hold, and qemu-img check's work grows with it. 65536 = MAX_DISK_GIB.
IMAGE_MAX_VIRTUAL_SIZE_GIB = envcheck.read(env.int, "IMAGE_MAX_VIRTUAL_SIZE_GIB", default=200)
if not 1 <= IMAGE_MAX_VIRTUAL_SIZE_GIB <= 65536:
    raise ImproperlyConfigured("Environment variable IMAGE_MAX_VIRTUAL_SIZE_GIB must be 1..65536")

# Console tickets live at most this long (docs/architecture.md, section 4 caps it at 60 s).
CONSOLE_TICKET_TTL_S = envcheck.read(env.int, "CONSOLE_TICKET_TTL_S", default=30)
if not 5 <= CONSOLE_TICKET_TTL_S <= 60:
    raise ImproperlyConfigured("Environment variable CONSOLE_TICKET_TTL_S must be 5..60")
CONSOLE_MAX_SESSIONS_PER_USER = envcheck.read(env.int, "CONSOLE_MAX_SESSIONS_PER_USER", default=4)
# How often an open console re-checks that its user may still see the desktop.
CONSOLE_RECHECK_S = envcheck.read(env.float, "CONSOLE_RECHECK_S", default=10.0)
# Where `manage.py consoleproxy` (the websockify gateway) listens.
CONSOLE_GATEWAY_LISTEN = envcheck.read(env.str, "CONSOLE_GATEWAY_LISTEN", default="127.0.0.1:6080")
# The gateway forks a process per console: cap them, and bound each WebSocket upgrade.
CONSOLE_GATEWAY_MAX_CONNECTIONS = envcheck.read(
    env.int, "CONSOLE_GATEWAY_MAX_CONNECTIONS", default=500
)
CONSOLE_HANDSHAKE_TIMEOUT_S = envcheck.read(env.float, "CONSOLE_HANDSHAKE_TIMEOUT_S", default=10.0)
if CONSOLE_GATEWAY_MAX_CONNECTIONS < 1 or not 0 < CONSOLE_HANDSHAKE_TIMEOUT_S <= 120:
    raise ImproperlyConfigured(
        "CONSOLE_GATEWAY_MAX_CONNECTIONS must be >= 1 and CONSOLE_HANDSHAKE_TIMEOUT_S 0..120"
    )
# The SPICE proxy (`manage.py spiceproxy`, HTTP CONNECT) that remote-viewer reaches guests
# through: where it listens, the address .vv files give clients for it, and its caps.
SPICE_PROXY_BIND = envcheck.host_port(
    envcheck.read(env.str, "SPICE_PROXY_BIND", default="127.0.0.1:6082"), "SPICE_PROXY_BIND"
)
SPICE_PROXY_URL = envcheck.http_proxy_url(
    envcheck.read(env.str, "SPICE_PROXY_URL", default=envcheck.url_of(SPICE_PROXY_BIND)),
    "SPICE_PROXY_URL",
)
SPICE_PROXY_MAX_CONNECTIONS = envcheck.read(env.int, "SPICE_PROXY_MAX_CONNECTIONS", default=200)
if SPICE_PROXY_MAX_CONNECTIONS < 1:
    raise ImproperlyConfigured("Environment variable SPICE_PROXY_MAX_CONNECTIONS must be >= 1")
# One user's share of the proxy: remote-viewer opens up to 16 connections per file.
SPICE_PROXY_MAX_CONNECTIONS_PER_USER = envcheck.read(
    env.int, "SPICE_PROXY_MAX_CONNECTIONS_PER_USER", default=32
)
if SPICE_PROXY_MAX_CONNECTIONS_PER_USER < 1:
    raise ImproperlyConfigured(
        "Environment variable SPICE_PROXY_MAX_CONNECTIONS_PER_USER must be >= 1"
    )
# The portal's SPICE CA and the proxy's certificate (scripts/setup.sh makes them): with it,
# remote-viewer speaks TLS to the proxy and the proxy TLS to QEMU. Empty: plain SPICE.
SPICE_TLS_DIR = envcheck.read(env.str, "SPICE_TLS_DIR", default="")
if SPICE_TLS_DIR:
    for _name in ("ca-cert.pem", "proxy-cert.pem", "proxy-key.pem"):
        if not (Path(SPICE_TLS_DIR) / _name).is_file():
            raise ImproperlyConfigured(
                f"Environment variable SPICE_TLS_DIR: {SPICE_TLS_DIR}/{_name} is missing "
                "(scripts/setup.sh makes the portal's SPICE CA there)"
            )

# Site-wide quota for users with neither a personal nor a group quota.
DEFAULT_QUOTA = {
    "max_desktops": envcheck.read(env.int, "DEFAULT_QUOTA_DESKTOPS", default=2),
    "max_vcpus": envcheck.read(env.int, "DEFAULT_QUOTA_VCPUS", default=4),
    "max_memory_mib": envcheck.read(env.int, "DEFAULT_QUOTA_MEMORY_MIB", default=4096),
    "max_disk_gib": envcheck.read(env.int, "DEFAULT_QUOTA_DISK_GIB", default=40),
}

# Axes: lock out an IP+username pair after repeated failed logins.
AXES_FAILURE_LIMIT = envcheck.read(env.int, "LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429  # axes' default, named here for the lock-out page
# A lock-out answers with the login page, the username kept and the minutes left.
AXES_LOCKOUT_CALLABLE = "vms.web.login.lockout_response"
# Reverse proxies (the TLS proxy in front of the portal) whose X-Forwarded-For is believed:
# comma-separated addresses or CIDR blocks. Empty: the peer is the client and the header is
# ignored. Axes and the audit trail both take the client's address from this one rule.
TRUSTED_PROXIES = envcheck.networks(
    envcheck.read(env.list, "TRUSTED_PROXIES", default=[]), "TRUSTED_PROXIES"
)
AXES_CLIENT_IP_CALLABLE = "vms.web.client.client_ip"
# Desktop egress (docs/networks.md "The guard"): besides the management plane the portal
# knows (every host, Redis, the database, the proxies, link-local), desktops reach nothing
# in DESKTOP_EGRESS_DENY (comma-separated IPv4 addresses or CIDR blocks; the default is the
# lab hosts' range, list the management networks of a real site) except what
# DESKTOP_EGRESS_ALLOW lists.
DESKTOP_EGRESS_DENY = envcheck.ipv4_networks(
    envcheck.read(env.list, "DESKTOP_EGRESS_DENY", default=["10.213.0.0/16"]),
    "DESKTOP_EGRESS_DENY",
)
DESKTOP_EGRESS_ALLOW = envcheck.ipv4_networks(
    envcheck.read(env.list, "DESKTOP_EGRESS_ALLOW", default=[]), "DESKTOP_EGRESS_ALLOW"
)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if TLS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envcheck.read(env.int, "SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envcheck.read(env.str, "LOG_LEVEL", default="INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
        "celery": {"level": "INFO"},
    },
}
