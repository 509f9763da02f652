"""Health of the parts the portal needs. Every check answers; none raises.

libvirt is not called here: each host's health comes from the heartbeat task, which
writes it to the database.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from portal.celery import app as celery_app
from vms.models import Host
from vms.roles import is_admin

log = logging.getLogger(__name__)
Check = dict[str, object]


def check_database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True, "detail": connection.vendor}


def check_redis() -> Check:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    finally:
        client.close()
    return {"ok": True, "detail": "PONG"}


def check_workers() -> Check:
    replies = celery_app.control.ping(timeout=1.0)
    if not replies:
        return {"ok": False, "detail": "no Celery worker answered within 1 s"}
    return {"ok": True, "detail": f"{len(replies)} worker(s) answered"}


def check_libvirt() -> Check:
    hosts = list(Host.objects.filter(enabled=True))
    if not hosts:
        return {"ok": False, "detail": "no enabled host is registered"}
    stale = timezone.now() - timedelta(seconds=3 * settings.HOST_HEARTBEAT_INTERVAL_S)
    problems = [_host_problem(host, stale) for host in hosts]
    bad = [p for p in problems if p]
    return {"ok": not bad, "detail": "; ".join(bad) or f"{len(hosts)} host(s) ok"}


def _host_problem(host: Host, stale: object) -> str:
    if host.last_checked_at is None:
        return f"{host.name}: not checked yet"
    if host.last_checked_at < stale:  # type: ignore[operator]
        return f"{host.name}: last check at {host.last_checked_at:%H:%M:%S} is stale"
    return "" if host.last_check_ok else f"{host.name}: {host.last_check_error}"


CHECKS: dict[str, Callable[[], Check]] = {
    "database": check_database,
    "redis": check_redis,
    "celery": check_workers,
    "libvirt": check_libvirt,
}


def health_report() -> dict[str, Check]:
    """Run every check; a check that fails with an exception reports it as an error."""
    report = {}
    for name, check in CHECKS.items():
        try:
            report[name] = check()
        except Exception as exc:
            log.warning("health check %s failed: %s", name, exc)
            report[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return report


def health_detail_allowed(*, user: Any, authorization: str) -> bool:
    """Whether a caller may see each check's detail: staff, or a monitor presenting
    `Authorization: Bearer <HEALTHZ_TOKEN>` (compared in constant time). Strangers see only
    whether the portal is healthy: host names and error text help an attacker."""
    return is_admin(user) or _bearer_matches(authorization, expected=settings.HEALTHZ_TOKEN)


def _bearer_matches(authorization: str, *, expected: str) -> bool:
    scheme, _, presented = authorization.partition(" ")
    if not expected or scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
