"""/healthz: strangers get the status code and one word; staff and a monitoring token get
the detail (host names, error text, each check)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

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
