"""/healthz: strangers get the status code and one word; staff and a monitoring token get
the detail (host names, error text, each check). A stranger's answer is cheap: a verdict
worked out at most every HEALTHZ_CACHE_S by one request, with no query and no Celery
broadcast for the others (issue 25: 40 concurrent strangers each paid a 1 s broadcast and
held a database connection, and took the site down)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from vms import health
from vms.models import Host

pytestmark = pytest.mark.django_db

TOKEN = "monitoring-token-for-tests-0123456789abcdef"
SECRET_HOST = "hv-secret-7"
SECRET_ERROR = "permission denied on /srv/secret-path"


@pytest.fixture
def broken_host(db: None) -> Host:
    """A host whose last heartbeat failed, with a name and error a stranger must not see."""
    return Host.objects.create(
        name=SECRET_HOST,
        uri=f"qemu+ssh://root@{SECRET_HOST}.internal/system",
        last_checked_at=timezone.now(),
        last_check_ok=False,
        last_check_error=SECRET_ERROR,
    )


def _detail_shown(response: Any) -> bool:
    return (
        response["Content-Type"] == "application/json"
        and response.json()["checks"]["libvirt"]["detail"] == f"{SECRET_HOST}: {SECRET_ERROR}"
    )


def test_a_stranger_gets_only_the_status_and_one_word(broken_host) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.content == b"unavailable"
    assert response["Content-Type"].startswith("text/plain")
    for secret in (SECRET_HOST.encode(), b"secret-path", b"checks", b"postgresql"):
        assert secret not in response.content


def test_a_stranger_sees_ok_when_all_is_well(celery_worker, broken_host) -> None:
    Host.objects.filter(pk=broken_host.pk).update(last_check_ok=True, last_check_error="")
    response = Client().get("/healthz")
    assert response.status_code == 200, response.content
    assert response.content == b"ok"


def test_a_logged_in_employee_is_a_stranger_too(employee, broken_host) -> None:
    client = Client()
    client.force_login(employee)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.content == b"unavailable"


def test_staff_see_each_check_with_its_detail(admin_user_, broken_host) -> None:
    client = Client()
    client.force_login(admin_user_)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert _detail_shown(response)
    assert set(response.json()["checks"]) == {"database", "redis", "celery", "libvirt"}


def test_the_monitoring_token_shows_the_detail(settings, broken_host) -> None:
    settings.HEALTHZ_TOKEN = TOKEN
    response = Client().get("/healthz", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert _detail_shown(response)


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Token {TOKEN}",
        TOKEN,
        "Bearer ",
        "Bearer",
        "",
    ],
)
def test_a_wrong_token_is_a_stranger(settings, broken_host, authorization: str) -> None:
    settings.HEALTHZ_TOKEN = TOKEN
    response = Client().get("/healthz", HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 503
    assert response.content == b"unavailable"


@pytest.mark.parametrize("authorization", ["Bearer ", "Bearer", "Bearer  "])
def test_no_token_configured_means_no_token_access(settings, broken_host, authorization) -> None:
    settings.HEALTHZ_TOKEN = ""
    response = Client().get("/healthz", HTTP_AUTHORIZATION=authorization)
    assert response.content == b"unavailable"


# --- the stranger's answer is cheap ------------------------------------------------------------


@pytest.fixture
def counted_checks(monkeypatch) -> Counter[str]:
    """How often each real check runs (each still runs: this counts, it does not fake)."""
    counts: Counter[str] = Counter()

    def counting(name: str, check: Callable[[], health.Check]) -> Callable[[], health.Check]:
        def run() -> health.Check:
            counts[name] += 1
            return check()

        return run

    checks = {name: counting(name, check) for name, check in health.CHECKS.items()}
    monkeypatch.setattr(health, "CHECKS", checks)
    return counts


def _healthy_host(host: Host) -> None:
    Host.objects.filter(pk=host.pk).update(
        last_checked_at=timezone.now(), last_check_ok=True, last_check_error=""
    )


def _stranger_get() -> Any:
    try:
        return Client().get("/healthz")
    finally:
        connection.close()  # this thread's own connection, if it took one


@pytest.mark.django_db(transaction=True)  # the requests' threads see the committed host
def test_forty_concurrent_strangers_cost_one_round_of_checks(
    celery_worker, broken_host, counted_checks
) -> None:
    _healthy_host(broken_host)
    start = threading.Barrier(40)
    answers: list[tuple[int, bytes]] = []

    def ask() -> None:
        start.wait(timeout=30)
        response = _stranger_get()
        answers.append((response.status_code, response.content))

    # Daemon threads joined against a deadline: before the fix, forty concurrent checks
    # hung the requests for minutes (the site was down), and the test must say so, not hang.
    threads = [threading.Thread(target=ask, daemon=True) for _ in range(40)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert len(answers) == 40, f"{40 - len(answers)} of 40 requests still hang after 60 s"
    assert set(answers) == {(200, b"ok")}
    # One request ran the checks (one broadcast); the 39 others waited for its verdict.
    assert counted_checks == {"celery": 1, "redis": 1, "database": 1, "libvirt": 1}


def test_a_stranger_with_a_fresh_verdict_costs_no_query_and_no_broadcast(
    broken_host, counted_checks
) -> None:
    assert Client().get("/healthz").status_code == 503  # works the verdict out
    ran = dict(counted_checks)
    for _ in range(20):
        with CaptureQueriesContext(connection) as queries:
            response = Client().get("/healthz")
        assert response.status_code == 503 and response.content == b"unavailable"
        assert len(queries) == 0, [q["sql"] for q in queries]
    assert counted_checks == ran  # no check ran again, the broadcast included


def test_the_strangers_verdict_follows_the_parts_within_its_age(
    settings, celery_worker, broken_host
) -> None:
    # Long enough that the second answer surely comes from the cache on a loaded machine.
    settings.HEALTHZ_CACHE_S = 4
    assert Client().get("/healthz").status_code == 503
    _healthy_host(broken_host)
    mended = time.monotonic()
    assert Client().get("/healthz").status_code == 503  # the verdict is younger than 4 s
    deadline = mended + 30
    while Client().get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the verdict was never worked out again"
        time.sleep(0.2)  # polling the real state, bounded by the deadline
    # At most one cache age (4 s), the stale grace (x3) and one round of checks (1 s).
    assert time.monotonic() - mended < 4 * health.Verdict.STALE_FACTOR + 2.5


def test_staff_always_get_a_fresh_report(admin_user_, broken_host, counted_checks) -> None:
    client = Client()
    client.force_login(admin_user_)
    for _ in range(2):
        assert client.get("/healthz").status_code == 503
    assert counted_checks["celery"] == 2
