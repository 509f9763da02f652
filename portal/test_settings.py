"""Settings for the test suite: the production settings, pointed away from a portal that
may run on the same machine (own Redis database, libvirt name prefix and storage pool).

Every value can still be overridden from the environment.
"""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("PORTAL_NAME_PREFIX", "dpt-")
os.environ.setdefault("STORAGE_POOL_NAME", "portal-test-desktops")
os.environ.setdefault("STORAGE_POOL_PATH", "/var/lib/desktop-portal/test-desktops")
os.environ.setdefault("BACKUP_DIR", os.environ["STORAGE_POOL_PATH"] + "-backups")
os.environ.setdefault("GUEST_SHUTDOWN_TIMEOUT_S", "15")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from portal.settings import *  # noqa: F403

# Fast password hashing: the tests make many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AXES_ENABLED = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - WhiteNoise warns when it is absent
# The suite's servers outlive database flushes (see tests/server_middleware.py).
MIDDLEWARE = [*MIDDLEWARE, "tests.server_middleware.ContentTypeCacheReset"]  # noqa: F405
