"""Health of the parts the portal needs. Every check answers; none raises.

libvirt is not called here: each host's health comes from the heartbeat task, which
writes it to the database.

A stranger's answer (`healthy_cached`) is one verdict per process, worked out at most every
HEALTHZ_CACHE_S by one request at a time: the checks cost a Celery broadcast of a second
and a database connection, and forty strangers asking at once must not pay that forty
times (issue 25: they took the site down). Staff and the token get every check, fresh.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
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


# The order the checks run in: the slow broadcast before the first query, so a database
# connection is taken only for the last few milliseconds.
RUN_ORDER = ("celery", "redis", "database", "libvirt")


def health_report() -> dict[str, Check]:
    """Run every check; a check that fails with an exception reports it as an error."""
    results = {}
    for name in sorted(CHECKS, key=lambda n: RUN_ORDER.index(n) if n in RUN_ORDER else 0):
        try:
            results[name] = CHECKS[name]()
        except Exception as exc:
            log.warning("health check %s failed: %s", name, exc)
            results[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    report = {name: results[name] for name in CHECKS}
    HEALTH_VERDICT.store(healthy=report_healthy(report))
    return report


def report_healthy(report: dict[str, Check]) -> bool:
    return all(check["ok"] for check in report.values())


class Verdict:
    """This process's last health verdict and its age, refreshed by one caller at a time.
    Others meanwhile get the last verdict while it is younger than STALE_FACTOR ages, and
    wait for the refresh otherwise (the first ask, or a long-idle process)."""

    STALE_FACTOR = 3

    def __init__(self) -> None:
        self._state = threading.Lock()
        self._refresh = threading.Lock()
        self._healthy: bool | None = None
        self._at = 0.0

    def store(self, *, healthy: bool) -> None:
        with self._state:
            self._healthy, self._at = healthy, time.monotonic()

    def clear(self) -> None:
        with self._state:
            self._healthy, self._at = None, 0.0

    def healthy(self, *, max_age_s: float, refresh: Callable[[], object]) -> bool:
        """The verdict at most `max_age_s` old, calling `refresh` (which stores) if none is."""
        known = self._fresh(max_age_s * self.STALE_FACTOR)
        fresh = self._fresh(max_age_s)
        if fresh is not None:
            return fresh
        if known is not None and not self._refresh.acquire(blocking=False):
            return known  # another request is refreshing it right now
        if known is None:
            self._refresh.acquire()  # nothing to answer with yet: wait for the refresh
        try:
            fresh = self._fresh(max_age_s)  # refreshed while this one waited?
            if fresh is None:
                refresh()
                fresh = self._fresh(float("inf"))
            return bool(fresh)
        finally:
            self._refresh.release()

    def _fresh(self, max_age_s: float) -> bool | None:
        with self._state:
            if self._healthy is None or time.monotonic() - self._at >= max_age_s:
                return None
            return self._healthy


HEALTH_VERDICT = Verdict()


def healthy_cached() -> bool:
    """A stranger's answer: the verdict of the checks run at most HEALTHZ_CACHE_S ago."""
    return HEALTH_VERDICT.healthy(max_age_s=settings.HEALTHZ_CACHE_S, refresh=health_report)


def health_detail_allowed(*, user: Any, authorization: str) -> bool:
    """Whether a caller may see each check's detail: staff, or a monitor presenting
    `Authorization: Bearer <HEALTHZ_TOKEN>` (compared in constant time). Strangers see only
    whether the portal is healthy: host names and error text help an attacker."""
    # The token first: it costs no query, where a user with a session cookie costs one.
    return _bearer_matches(authorization, expected=settings.HEALTHZ_TOKEN) or is_admin(user)


def _bearer_matches(authorization: str, *, expected: str) -> bool:
    scheme, _, presented = authorization.partition(" ")
    if not expected or scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
