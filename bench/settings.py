"""Settings for the bench's own portal processes: the production settings, pointed at the
bench's own PostgreSQL database, Redis database, libvirt name prefix and storage pool.

The bench's values are forced (not defaults): a caller's DATABASE_URL (scripts/test exports
the test database's) must never be flushed by a bench run. Override them with BENCH_*.
"""

import os

from portal import localredis

BENCH_ENV = {
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", "postgres://portal:portal@127.0.0.1:5432/portal_bench"
    ),
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL") or localredis.url(db=14),
    "PORTAL_NAME_PREFIX": "dpb-",
    "STORAGE_POOL_NAME": "portal-bench",
    "STORAGE_POOL_PATH": "/var/lib/desktop-portal/bench-pool",
    "LIBVIRT_URI": "qemu:///system",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "LOG_LEVEL": "WARNING",
    # The relay measurement holds up to 200 consoles of one user open at once.
    "CONSOLE_MAX_SESSIONS_PER_USER": "1000",
    "PORTAL_TLS": "false",
    "DJANGO_DEBUG": "false",
    # The fleet bench's lab hosts share one local pool directory, which libvirt cannot
    # know to be shared (docs/fleet.md).
    "MIGRATION_ALLOW_UNSAFE": "true",
    # Simulated fleets (tests/simfleet.py) are libvirt test drivers loaded from node files.
    "PORTAL_TEST_DRIVER_FILES": "1",
}
os.environ.update(BENCH_ENV)

from portal.settings import *  # noqa: E402, F403
