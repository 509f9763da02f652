"""Shared fixtures. The tests run against real services: PostgreSQL (DATABASE_URL, set by
scripts/test), Redis, the real libvirtd with QEMU guests, and a real Celery worker.
Settings: portal/test_settings.py.
"""

pytest_plugins = ["tests.fixtures"]
