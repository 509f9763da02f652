"""The owner's End button really drops the help-desk's console: against each real relay
(the Channels relay in daphne and the websockify gateway) and a real QEMU guest."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import websockets
from django.db import connection
from django.test import Client
from django.urls import reverse

from tests.fixtures import wait_for_status
from tests.relay.conftest import ORIGIN, mint_ticket, rfb_handshake, session_cookie
from vms.models import AuditEvent, ConsoleSession
from vms.services.consoles import CLOSE_ENDED_BY_OWNER

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
T = TypeVar("T")


def _closing_its_connection(fn: Callable[..., T]) -> Callable[..., T]:
    """For code run in a worker thread: Django opens a connection per thread, and one left
    open would keep the test database from being dropped."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> T:
        try:
            return fn(*args)
        finally:
            connection.close()

    return wrapper


@_closing_its_connection
def _open_session(desktop, user, timeout: float = 15) -> ConsoleSession:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = ConsoleSession.objects.filter(desktop=desktop, user=user, ended_at=None).first()
        if session is not None:
            return session
        time.sleep(0.1)
    raise AssertionError("the relay did not record the help-desk session")


@_closing_its_connection
def _owner_ends(owner, desktop, session) -> int:
    client = Client()
    client.force_login(owner)
    url = reverse("console-session-end", kwargs={"pk": desktop.pk})
    return client.post(url, {"session": session.pk}).status_code


def test_the_owners_end_drops_the_helpdesk_console(
    relay, celery_worker, api_for, employee, helpdesk_user, demo_template
) -> None:
    launched = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(launched.json()["id"], "running")
    ticket = mint_ticket(helpdesk_user, desktop, mode="full", reason="ticket 9")["ticket"]
    cookie = session_cookie(helpdesk_user)

    async def scenario() -> tuple[int | None, float]:
        async with websockets.connect(
            f"{relay.url}/ws/console/{desktop.pk}/",
            origin=ORIGIN,
            subprotocols=["binary", f"ticket.{ticket}"],
            additional_headers={"Cookie": cookie},
        ) as ws:
            await rfb_handshake(ws)  # the help-desk's console is up
            await ws.send(b"\x03\x00\x00\x00\x00\x00\x02\xd0\x01\x90")  # full update, please
            # The guest's answer has crossed the relay before the end (so its tally of
            # bytes from the guest is above zero however fast the owner is).
            await asyncio.wait_for(ws.recv(), 20)
            session = await asyncio.to_thread(_open_session, desktop, helpdesk_user)
            ended_at = time.monotonic()
            assert await asyncio.to_thread(_owner_ends, employee, desktop, session) == 302
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                return code, time.monotonic() - ended_at

    code, seconds = asyncio.run(scenario())
    assert code == CLOSE_ENDED_BY_OWNER == 4460
    # The Channels relay is told at once; the gateway hears it at its next re-check (1 s).
    assert seconds < (1.0 if relay.name == "channels" else 5.0), seconds
    session = ConsoleSession.objects.get(desktop=desktop, user=helpdesk_user)
    assert session.close_reason == "ended by the desktop's owner"
    assert AuditEvent.objects.filter(action="console.end", actor=employee).count() == 1
    # The relay's own count of the bytes it carried is kept in the audit trail.
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="console.tally").exists():
        assert time.monotonic() < deadline, "the relay did not report its tally"
        time.sleep(0.1)
    tally = AuditEvent.objects.get(action="console.tally")
    assert tally.detail["bytes_from_guest"] > 0
