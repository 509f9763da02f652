"""The same protocol tests against both relays (Channels in daphne, websockify gateway).

Refusals need no guest: they happen before the relay touches libvirt. The happy path
and the view-only filter use a real guest booted by the real worker.
"""

from __future__ import annotations

import socket

import pytest
import redis
from django.conf import settings

from tests.fixtures import make_desktop, wait_for_status
from tests.relay.conftest import (
    CONNECTED,
    connect,
    mint_ticket,
    random_tickets,
    session_cookie,
)
from vms.models import ConsoleSession, Desktop, DesktopStatus
from vms.services.consoles.tickets import _key
from vms.services.desktops.transitions import compare_and_set

pytestmark = pytest.mark.django_db(transaction=True)

KEY_EVENT_A = b"\x04\x01\x00\x00\x00\x00\x00\x61" + b"\x04\x00\x00\x00\x00\x00\x00\x61"
FB_UPDATE_REQUEST = b"\x03\x00\x00\x00\x00\x00\x02\xd0\x01\x90"


@pytest.fixture
def desktop_row(employee, fake_template, fake_host) -> Desktop:
    """A desktop marked running (no guest): enough for every refusal."""
    return make_desktop(
        employee, fake_template, name="row", status=DesktopStatus.RUNNING, domain_name="dpt-nothing"
    )


def test_ticket_works_only_once(relay, employee, desktop_row) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    first = connect(relay.url, desktop_row, ticket, cookie=session_cookie(employee))
    # No guest here: the first use gets past admission and fails only at the display.
    assert first.code == 4502
    again = connect(relay.url, desktop_row, ticket, cookie=session_cookie(employee))
    assert again.code == 4401


def test_expired_ticket_is_refused(relay, employee, desktop_row) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    redis.Redis.from_url(settings.REDIS_URL).pexpire(_key(ticket), 1)  # its TTL runs out
    assert connect(relay.url, desktop_row, ticket, cookie=session_cookie(employee)).code == 4401


def test_ticket_for_another_desktop_is_refused(
    relay, employee, desktop_row, fake_template, fake_host
) -> None:
    other = make_desktop(employee, fake_template, name="other", status=DesktopStatus.RUNNING)
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    outcome = connect(relay.url, other, ticket, cookie=session_cookie(employee))
    assert outcome.code == 4403


def test_foreign_origin_is_refused(relay, employee, desktop_row) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    outcome = connect(
        relay.url,
        desktop_row,
        ticket,
        origin="https://evil.example",
        cookie=session_cookie(employee),
    )
    assert outcome.code in (403, 4403)  # Channels refuses at the upgrade, websockify after


def test_missing_origin_is_refused(relay, employee, desktop_row) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    outcome = connect(
        relay.url, desktop_row, ticket, origin="null", cookie=session_cookie(employee)
    )
    assert outcome.code in (403, 4403)


def test_stopped_desktop_is_refused_at_connect(relay, employee, desktop_row) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    compare_and_set(
        desktop_id=desktop_row.pk, old=DesktopStatus.RUNNING, new=DesktopStatus.STOPPING
    )
    outcome = connect(relay.url, desktop_row, ticket, cookie=session_cookie(employee))
    assert outcome.code == 4409


def test_access_lost_after_the_ticket_is_refused(
    relay, employee, helpdesk_user, desktop_row
) -> None:
    ticket = mint_ticket(helpdesk_user, desktop_row)["ticket"]
    helpdesk_user.groups.clear()  # no longer help-desk: the relay re-checks the right
    outcome = connect(relay.url, desktop_row, ticket, cookie=session_cookie(helpdesk_user))
    assert outcome.code == 4403


def test_a_thousand_random_tickets_never_connect(relay, employee, desktop_row) -> None:
    import asyncio

    seen = asyncio.run(random_tickets(relay.url, desktop_row, session_cookie(employee), 1000))
    assert CONNECTED not in seen, seen
    # Each is refused with 4401; under a loaded machine a few may instead be dropped by
    # the server's handshake timeout before any RFB byte (None): refused just the same.
    assert set(seen) <= {4401, None}, seen
    assert seen[4401] >= 990, seen
    assert not ConsoleSession.objects.exists()


def test_channels_relay_refuses_a_ticket_presented_by_another_user(
    channels_relay, employee, other_employee, desktop_row
) -> None:
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    outcome = connect(
        channels_relay.url, desktop_row, ticket, cookie=session_cookie(other_employee)
    )
    assert outcome.code == 4403


@pytest.mark.libvirt
def test_full_and_view_sessions_on_a_real_guest(
    relay, celery_worker, api_for, employee, helpdesk_user, demo_template, hypervisor
) -> None:
    launched = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(launched.json()["id"], "running")

    full = connect(
        relay.url,
        desktop,
        mint_ticket(employee, desktop)["ticket"],
        cookie=session_cookie(employee),
        after=FB_UPDATE_REQUEST,
    )
    assert full.code is None, full.reason
    width, height = int.from_bytes(full.server_init[:2]), int.from_bytes(full.server_init[2:4])
    assert (width, height) == (720, 400)  # the guest's VGA text console
    assert desktop.domain_name.encode() in full.server_init

    view = connect(
        relay.url,
        desktop,
        mint_ticket(helpdesk_user, desktop)["ticket"],
        cookie=session_cookie(helpdesk_user),
        after=KEY_EVENT_A + FB_UPDATE_REQUEST,
    )
    assert view.code is None, view.reason
    sessions = _ended_sessions(desktop, count=2)
    owner, helper = sessions[employee.pk], sessions[helpdesk_user.pk]
    assert (owner.mode, owner.dropped_messages) == ("full", 0)
    assert (helper.mode, helper.dropped_messages) == ("view", 2)
    assert helper.bytes_to_guest == len(FB_UPDATE_REQUEST)
    assert helper.bytes_from_guest > 0
    assert helper.relay == relay.name

    # A malformed message closes that session only; the relay goes on serving others.
    broken = connect(
        relay.url,
        desktop,
        mint_ticket(employee, desktop)["ticket"],
        cookie=session_cookie(employee),
        after=b"\x63garbage",
    )
    assert broken.code == 4400
    oversized = connect(
        relay.url,
        desktop,
        mint_ticket(employee, desktop)["ticket"],
        cookie=session_cookie(employee),
        after=b"\x06\x00\x00\x00\x7f\xff\xff\xff",
    )
    assert oversized.code == 4400  # a 2 GiB clipboard announcement
    after = connect(
        relay.url,
        desktop,
        mint_ticket(employee, desktop)["ticket"],
        cookie=session_cookie(employee),
        after=FB_UPDATE_REQUEST,
    )
    assert after.code is None and after.server_init == full.server_init

    # Without the per-session password, QEMU's display refuses a direct connection.
    endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as raw:
        assert raw.recv(12) == b"RFB 003.008\n"
        raw.sendall(b"RFB 003.008\n")
        offered = raw.recv(16)
        assert offered[0] >= 1 and 1 not in offered[1 : 1 + offered[0]]  # no "None" security


def _ended_sessions(desktop: Desktop, *, count: int) -> dict[int, ConsoleSession]:
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sessions = list(ConsoleSession.objects.filter(desktop=desktop, ended_at__isnull=False))
        if len(sessions) == count:
            return {session.user_id: session for session in sessions}
        time.sleep(0.2)
    raise AssertionError("the relay did not record both sessions' ends")
