"""The SPICE relay's admission, against the real relay servers (daphne's Channels relay and
the websockify gateway), real Redis and PostgreSQL: one ticket per console session
covering its channels, Origin, presenter, another user's desktop, and the channel types a
view-only session may link. Nothing here reaches a guest: every refusal comes first."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
import websockets

from tests.fixtures import make_desktop
from tests.relay.conftest import ORIGIN, mint_ticket, session_cookie
from vms.console.spicelink import (
    CAP_AUTH_SELECTION,
    CAP_MINI_HEADER,
    CHANNEL_DISPLAY,
    CHANNEL_INPUTS,
    CHANNEL_MAIN,
    HEADER,
    LINK_ERR_INVALID_DATA,
    LINK_ERR_PERMISSION_DENIED,
    build_mess,
    parse_header,
    parse_reply,
)
from vms.models import ConsoleSession, ConsoleType, DesktopStatus, Template
from vms.services.consoles import (
    Knock,
    console_session_close,
    console_session_open,
    console_ticket_redeem,
)
from vms.services.consoles.spice_channels import BYTES_PREFIX, spice_channels_open
from vms.services.consoles.store import redis_client

pytestmark = pytest.mark.django_db(transaction=True)
SPICE_SESSION_ID = 0x1234ABCD
CAPS = ((1 << CAP_AUTH_SELECTION) | (1 << CAP_MINI_HEADER),)


@pytest.fixture
def spice_desktop(employee: Any, fake_template: Template, fake_host: Any) -> Any:
    Template.objects.filter(pk=fake_template.pk).update(console_type=ConsoleType.SPICE)
    return make_desktop(employee, fake_template, name="spice", status=DesktopStatus.RUNNING)


class Knocked:
    """How a SPICE socket went: closed (code, reason), or still open; and any link reply."""

    def __init__(self, code: int | None, reason: str, reply: bytes) -> None:
        self.code, self.reason, self.reply = code, reason, reply

    @property
    def link_error(self) -> int:
        assert len(self.reply) >= HEADER.size + 4, self.reply
        parse_header(self.reply[: HEADER.size])
        return parse_reply(self.reply[HEADER.size :]).error


async def knock(
    url: str,
    ticket: str,
    *,
    cookie: str | None,
    origin: str = ORIGIN,
    link: bytes = b"",
    hold: float = 1.5,
    forwarded: str | None = None,
) -> Knocked:
    """Open a SPICE socket, send `link` (if any), and see what happens within `hold` s;
    `forwarded` is the address the (trusted, loopback) proxy reports for the browser."""
    headers = [("Cookie", cookie)] if cookie else []
    headers += [("X-Forwarded-For", forwarded)] if forwarded else []
    try:
        async with websockets.connect(
            url,
            subprotocols=["binary", f"ticket.{ticket}"],
            origin=origin,
            additional_headers=headers or None,
            open_timeout=10,
        ) as ws:
            reply = b""
            try:
                if link:
                    await ws.send(link)
                while True:
                    reply += bytes(await asyncio.wait_for(ws.recv(), hold))
            except TimeoutError:
                return Knocked(None, "", reply)
            except websockets.ConnectionClosed as closed:
                return Knocked(
                    closed.rcvd.code if closed.rcvd else None,
                    closed.rcvd.reason if closed.rcvd else "",
                    reply,
                )
    except websockets.InvalidStatus as refused:
        return Knocked(refused.response.status_code, "", b"")


def _all_closed(desktop: Any, timeout: float = 15) -> None:
    """Wait until the relay has recorded the end of every session it opened on `desktop`
    (it does so after the socket closed; the test must not end before that write)."""
    deadline = time.monotonic() + timeout
    while ConsoleSession.objects.filter(desktop=desktop, ended_at__isnull=True).exists():
        assert time.monotonic() < deadline, "the relay never recorded a session's end"
        time.sleep(0.05)


def spice_url(relay: Any, desktop: Any) -> str:
    return f"{relay.url}/ws/spice/{desktop.pk}/"


def main_link() -> bytes:
    return build_mess(connection_id=0, channel_type=CHANNEL_MAIN, channel_id=0, common=CAPS)


def channel_link(channel_type: int, connection_id: int = SPICE_SESSION_ID) -> bytes:
    return build_mess(
        connection_id=connection_id, channel_type=channel_type, channel_id=0, common=CAPS
    )


def test_the_console_api_names_the_spice_relay(employee, spice_desktop) -> None:
    assert mint_ticket(employee, spice_desktop)["url"] == f"/ws/spice/{spice_desktop.pk}/"


def test_forged_and_reused_tickets_are_refused(relay, employee, spice_desktop) -> None:
    cookie = session_cookie(employee)
    url = spice_url(relay, spice_desktop)
    forged = asyncio.run(knock(url, secrets.token_urlsafe(32), cookie=cookie))
    assert forged.code == 4401
    ticket = mint_ticket(employee, spice_desktop)["ticket"]

    async def twice() -> tuple[Knocked, Knocked]:
        first = asyncio.create_task(knock(url, ticket, cookie=cookie, hold=2.5))
        await asyncio.sleep(1.5)
        second = await knock(url, ticket, cookie=cookie)
        return await first, second

    first, second = asyncio.run(twice())
    assert first.code is None  # admitted: it waited for its link
    assert second.code == 4401  # a ticket opens one session, and the main channel is its first
    assert ConsoleSession.objects.filter(desktop=spice_desktop).count() == 1
    _all_closed(spice_desktop)


def test_a_foreign_origin_is_refused_before_the_ticket_is_used(
    relay, employee, spice_desktop
) -> None:
    cookie = session_cookie(employee)
    url = spice_url(relay, spice_desktop)
    ticket = mint_ticket(employee, spice_desktop)["ticket"]
    foreign = asyncio.run(knock(url, ticket, cookie=cookie, origin="https://evil.example"))
    assert foreign.code in (403, 4403)  # refused at the handshake, or at once after
    assert asyncio.run(knock(url, ticket, cookie=cookie)).code is None  # still unused
    _all_closed(spice_desktop)


def test_another_users_desktop_is_refused(
    relay, api_for, employee, other_employee, spice_desktop, fake_template
) -> None:
    response = api_for(other_employee).post(f"/api/desktops/{spice_desktop.pk}/console/", {})
    assert response.status_code == 404
    theirs = make_desktop(other_employee, fake_template, name="x", status=DesktopStatus.RUNNING)
    ticket = mint_ticket(employee, spice_desktop)["ticket"]
    wrong_path = spice_url(relay, theirs)
    assert asyncio.run(knock(wrong_path, ticket, cookie=session_cookie(employee))).code == 4403


def test_a_vnc_desktop_has_no_spice_relay(relay, employee, fake_template) -> None:
    vnc = make_desktop(employee, fake_template, name="vnc", status=DesktopStatus.RUNNING)
    ticket = mint_ticket(employee, vnc)["ticket"]
    outcome = asyncio.run(knock(spice_url(relay, vnc), ticket, cookie=session_cookie(employee)))
    assert outcome.code == 4403
    _all_closed(vnc)


def _tallied(session: ConsoleSession, dropped: int, timeout: float = 10) -> None:
    """Wait until the relay has reported `dropped` refused channels of `session` (it does
    so after closing the socket; the test must not end before that write)."""
    key = f"{BYTES_PREFIX}{session.pk}"
    deadline = time.monotonic() + timeout
    while int(redis_client().hget(key, "dropped") or 0) < dropped:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the relay never reported the refused channel"
        time.sleep(0.05)


def _granted(user: Any, desktop: Any, mode: str = "full", reason: str = "") -> str:
    """A ticket whose main channel is up: a real admission, then the grant the relay
    records when QEMU names the SPICE session (there is no QEMU here)."""
    ticket = mint_ticket(user, desktop, mode=mode, reason=reason)["ticket"]
    claim = console_ticket_redeem(ticket=ticket)
    assert claim is not None
    session = console_session_open(claim=claim, relay="channels", source_ip="127.0.0.1")
    knocked = Knock(
        origin=ORIGIN,
        host=None,
        secure=False,
        protocols=[f"ticket.{ticket}"],
        source_ip="127.0.0.1",
        desktop_id=str(desktop.pk),
    )
    spice_channels_open(session=session, knock=knocked, spice_session_id=SPICE_SESSION_ID)
    return ticket, session


def test_channels_join_only_their_session_from_its_user(
    relay, employee, other_employee, spice_desktop
) -> None:
    ticket, session = _granted(employee, spice_desktop)
    url = spice_url(relay, spice_desktop)
    display = channel_link(CHANNEL_DISPLAY)
    if relay.name == "channels":  # it sees the browser session: the main channel's user only
        other = asyncio.run(knock(url, ticket, cookie=session_cookie(other_employee), link=display))
        assert other.code == 4403
        assert asyncio.run(knock(url, ticket, cookie=None, link=display)).code == 4403
    # Both: the main channel's address only.
    moved = asyncio.run(
        knock(url, ticket, cookie=session_cookie(employee), link=display, forwarded="10.9.9.9")
    )
    assert moved.code == 4403
    # The session's own channels must link with its SPICE session id, and never as main.
    wrong_id = asyncio.run(
        knock(url, ticket, cookie=session_cookie(employee), link=channel_link(CHANNEL_DISPLAY, 7))
    )
    assert wrong_id.code == 4403 and wrong_id.link_error == 8
    _tallied(session, 1)
    again_main = asyncio.run(knock(url, ticket, cookie=session_cookie(employee), link=main_link()))
    assert again_main.code == 4403 and again_main.link_error == LINK_ERR_INVALID_DATA
    _tallied(session, 2)
    # Once the session ends, its ticket admits nothing more.
    console_session_close(
        session_id=ConsoleSession.objects.get(desktop=spice_desktop).pk, reason="test"
    )
    ended = asyncio.run(knock(url, ticket, cookie=session_cookie(employee), link=display))
    assert ended.code == 4403, ended.reason


def test_view_only_never_gets_an_inputs_channel(
    relay, employee, helpdesk_user, spice_desktop
) -> None:
    ticket, session = _granted(helpdesk_user, spice_desktop, mode="view")
    url = spice_url(relay, spice_desktop)
    inputs = asyncio.run(
        knock(url, ticket, cookie=session_cookie(helpdesk_user), link=channel_link(CHANNEL_INPUTS))
    )
    assert inputs.code == 4403 and inputs.link_error == LINK_ERR_PERMISSION_DENIED
    # Nor record, smartcard, usbredir, port or webdav channels.
    for refused in (6, 8, 9, 10, 11):
        outcome = asyncio.run(
            knock(url, ticket, cookie=session_cookie(helpdesk_user), link=channel_link(refused))
        )
        assert outcome.link_error == LINK_ERR_PERMISSION_DENIED, refused
    _tallied(session, 6)  # each refusal is counted for the session's audit


def test_a_main_channel_must_come_first(relay, employee, spice_desktop) -> None:
    ticket = mint_ticket(employee, spice_desktop)["ticket"]
    outcome = asyncio.run(
        knock(
            spice_url(relay, spice_desktop),
            ticket,
            cookie=session_cookie(employee),
            link=channel_link(CHANNEL_INPUTS, 0),
        )
    )
    assert outcome.code == 4403 and outcome.link_error == LINK_ERR_INVALID_DATA
    _all_closed(spice_desktop)
