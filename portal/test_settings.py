"""Settings for the test suite: the production settings, pointed away from a portal that
may run on the same machine (own Redis database, libvirt name prefix and storage pool).

Every value can still be overridden from the environment.
"""

import os
from urllib.parse import urlsplit, urlunsplit

from portal import localredis

# The portal's own Redis (with its password), database 15; set in the environment so that
# the suite's servers and workers inherit it.
os.environ.setdefault("REDIS_URL", localredis.url(db=15))
os.environ.setdefault("PORTAL_NAME_PREFIX", "dpt-")
os.environ.setdefault("STORAGE_POOL_NAME", "portal-test-desktops")
os.environ.setdefault("STORAGE_POOL_PATH", "/var/lib/desktop-portal/test-desktops")
os.environ.setdefault("BACKUP_DIR", os.environ["STORAGE_POOL_PATH"] + "-backups")


def _isolate_xdist_worker() -> None:
    """Under pytest-xdist (`-n N`), worker gwI gets resources of its own, derived from the
    ones above: Redis database K+I (K that of REDIS_URL: Celery's queues, the Channels
    layer and the console leases are per database), name prefix `dpt-` -> `dptI-`, storage
    pool and backup folder with `-gwI` appended. pytest-django gives it its own test
    database (`_gwI`). Its servers inherit the environment, so this runs once per worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or os.environ.get("PORTAL_TEST_WORKER") == worker:
        return
    index = int(worker.removeprefix("gw"))
    url = urlsplit(os.environ["REDIS_URL"])
    db = int(url.path.strip("/") or 0) + index
    os.environ["REDIS_URL"] = urlunsplit(url._replace(path=f"/{db}"))
    os.environ["PORTAL_NAME_PREFIX"] = f"{os.environ['PORTAL_NAME_PREFIX'].rstrip('-')}{index}-"
    for name in ("STORAGE_POOL_NAME", "STORAGE_POOL_PATH", "BACKUP_DIR"):
        os.environ[name] = f"{os.environ[name]}-{worker}"
    os.environ["PORTAL_TEST_WORKER"] = worker


_isolate_xdist_worker()
os.environ.setdefault("GUEST_SHUTDOWN_TIMEOUT_S", "15")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Lab hosts share one local pool directory, which libvirt cannot know to be shared: their
# live migrations need VIR_MIGRATE_UNSAFE (tests/fleet/test_migration.py shows the refusal
# without it).
os.environ.setdefault("MIGRATION_ALLOW_UNSAFE", "1")
# Simulated fleets (tests/simfleet.py) are libvirt test drivers loaded from node files.
os.environ.setdefault("PORTAL_TEST_DRIVER_FILES", "1")

from portal.settings import *  # noqa: E402, F403

# Fast password hashing: the tests make many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AXES_ENABLED = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - WhiteNoise warns when it is absent
# The suite's servers outlive database flushes (see tests/server_middleware.py).
MIDDLEWARE = [*MIDDLEWARE, "tests.server_middleware.ContentTypeCacheReset"]  # noqa: F405
