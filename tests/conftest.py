"""Shared fixtures. The tests run against real services: PostgreSQL (DATABASE_URL, set by
scripts/test), Redis, the real libvirtd with QEMU guests, and a real Celery worker.
Settings: portal/test_settings.py.
"""

pytest_plugins = ["tests.fixtures", "tests.fast_layer", "tests.parallel"]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_health_verdict() -> None:
    """Each test starts with no cached /healthz verdict (a process keeps one for seconds)."""
    from vms.health import HEALTH_VERDICT

    HEALTH_VERDICT.clear()
