"""Login throttling and recorded addresses behind the TLS proxy.

X-Forwarded-For is believed only when the peer is one of TRUSTED_PROXIES. Then each client
behind the proxy is throttled on its own address (an attacker cannot lock a colleague out
by failing logins for them), and audit rows name the client, not the proxy. Without a
trusted proxy the header is ignored: rotating it neither dodges the lock-out nor changes
what is recorded. Real requests through the real login view, with django-axes enabled.
"""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from axes.models import AccessAttempt
from django.test import Client

from vms.models import AuditEvent, Desktop

pytestmark = pytest.mark.django_db

PROXY = "10.0.0.5"
ATTACKER = "203.0.113.66"
ALICE = "198.51.100.7"
PASSWORD = "pw-for-tests"  # the fixtures' password


def _login(client: Client, username: str, password: str, **headers: str) -> int:
    data = {"username": username, "password": password}
    return client.post("/login/", data, **headers).status_code


def _via(remote: str, forwarded_for: str | None = None) -> dict[str, str]:
    headers = {"REMOTE_ADDR": remote}
    if forwarded_for is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return headers


def _fail_until_locked(settings, username: str, headers_for_try) -> None:
    """Fail the login AXES_FAILURE_LIMIT times; the last try must be the lock-out (429)."""
    limit = settings.AXES_FAILURE_LIMIT
    codes = [_login(Client(), username, "wrong", **headers_for_try(i)) for i in range(limit)]
    assert codes == [200] * (limit - 1) + [429]


@pytest.fixture
def behind_proxy(settings) -> None:
    settings.TRUSTED_PROXIES = [ip_network(f"{PROXY}/32")]


# --- no trusted proxy (the default) ---------------------------------------------------------


def test_without_a_trusted_proxy_a_rotated_forwarded_for_does_not_dodge_the_lock(
    settings, employee
) -> None:
    settings.TRUSTED_PROXIES = []
    _fail_until_locked(settings, employee.username, lambda i: _via(ATTACKER, f"192.0.2.{i + 1}"))
    # Still locked, whatever the header says next, even with the right password.
    assert _login(Client(), employee.username, PASSWORD, **_via(ATTACKER, ALICE)) == 429
    recorded = set(AccessAttempt.objects.values_list("ip_address", flat=True))
    assert recorded == {ATTACKER}


def test_without_a_trusted_proxy_the_forged_address_is_not_audited(
    settings, api_for, employee, fake_template
) -> None:
    settings.TRUSTED_PROXIES = []
    response = api_for(employee).post(
        "/api/desktops/",
        {"template": fake_template.pk},
        format="json",
        **_via(ATTACKER, "192.0.2.99"),
    )
    assert response.status_code == 202, response.content
    event = AuditEvent.objects.get(action="desktop.create")
    assert event.source_ip == ATTACKER


# --- behind the trusted proxy ----------------------------------------------------------------


def test_behind_the_proxy_one_client_cannot_lock_out_another(
    settings, behind_proxy, employee
) -> None:
    _fail_until_locked(settings, employee.username, lambda i: _via(PROXY, ATTACKER))
    assert _login(Client(), employee.username, PASSWORD, **_via(PROXY, ATTACKER)) == 429
    # The same account from another client behind the same proxy still logs in.
    alice = Client()
    assert _login(alice, employee.username, PASSWORD, **_via(PROXY, ALICE)) == 302
    assert alice.session["_auth_user_id"] == str(employee.pk)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_behind_the_proxy_forged_hops_left_of_the_client_do_not_dodge_the_lock(
    settings, behind_proxy, employee
) -> None:
    # The attacker writes a fresh X-Forwarded-For each time; the proxy appends the
    # address it really saw. Only that right-most entry counts.
    _fail_until_locked(
        settings, employee.username, lambda i: _via(PROXY, f"192.0.2.{i + 1}, {ATTACKER}")
    )
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_behind_the_proxy_a_direct_caller_cannot_claim_another_address(
    settings, behind_proxy, employee
) -> None:
    # Someone who reaches the portal without going through the proxy sends the header too.
    _fail_until_locked(settings, employee.username, lambda i: _via(ATTACKER, f"192.0.2.{i + 1}"))
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_behind_the_proxy_the_audit_names_the_client(
    behind_proxy, api_for, employee, fake_template
) -> None:
    api = api_for(employee)
    response = api.post(
        "/api/desktops/", {"template": fake_template.pk}, format="json", **_via(PROXY, ALICE)
    )
    assert response.status_code == 202, response.content
    desktop = Desktop.objects.get(pk=response.json()["id"])
    assert AuditEvent.objects.get(action="desktop.create", desktop=desktop).source_ip == ALICE
