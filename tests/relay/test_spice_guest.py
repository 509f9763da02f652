"""SPICE through both relays to a real QEMU guest (SPICE graphics, libvirt, a real Celery
worker): a SPICE client speaking the protocol as spice-html5 does links the main channel
with a dummy ticket (the relay holds the real password), learns its SPICE session, links
the inputs channel and types; the guest's shell writes what it got to its serial port. A
view-only session's inputs channel is refused and its agent messages are dropped."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
import websockets

from tests.browser.conftest import wait_for_boot
from tests.browser.test_console_ux import serial_of
from tests.fixtures import wait_for_status
from tests.relay.conftest import ORIGIN, mint_ticket, session_cookie
from vms.console.spicelink import (
    CAP_AUTH_SELECTION,
    CAP_MINI_HEADER,
    CHANNEL_DISPLAY,
    CHANNEL_INPUTS,
    CHANNEL_MAIN,
    HEADER,
    LINK_ERR_BAD_CONNECTION_ID,
    LINK_ERR_PERMISSION_DENIED,
    LINK_OK,
    build_mess,
    encrypt_ticket,
    parse_reply,
)
from vms.models import ConsoleSession, ConsoleType, Template

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
CAPS = ((1 << CAP_AUTH_SELECTION) | (1 << CAP_MINI_HEADER),)
MINI = struct.Struct("<HI")
MSG_MAIN_INIT, MSGC_ATTACH_CHANNELS, MSGC_AGENT_START = 103, 104, 106
MSGC_KEY_DOWN, MSGC_KEY_UP = 101, 102
# The display channel's first message, as spice-html5 sends it (a display channel closed
# without it, or with a short one, crashes QEMU 7.2's SPICE worker: docs/threat-model.md).
MSGC_DISPLAY_INIT = 101
DISPLAY_INIT = struct.pack("<BQBI", 1, 10 << 20, 0, 0)
SHIFT = 0x2A
# QEMU's PS/2 keyboard holds 16 scancodes and drops what comes beyond, until the guest reads
# them; a guest whose vCPU waits for the CPU (four test workers on two cores) reads late.
# At 20 ms per event a clean-clone run lost two keys ("owner-ill-types"); 50 ms leaves the
# guest 0.8 s for 16 events.
KEY_EVENT_S = 0.05
# US scancodes (set 1) of what the test types.
KEYS = {" ": 0x39, "-": 0x0C, "/": 0x35, ".": 0x34, "\n": 0x1C, "0": 0x0B}
KEYS |= {c: 0x10 + i for i, c in enumerate("qwertyuiop")}
KEYS |= {c: 0x1E + i for i, c in enumerate("asdfghjkl")}
KEYS |= {c: 0x2C + i for i, c in enumerate("zxcvbnm")}
SHIFTED = {">": "."}


class Channel:
    """One SPICE channel's WebSocket, read as a byte stream."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buffer = b""

    async def take(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self.buffer += bytes(await asyncio.wait_for(self.ws.recv(), 20))
        taken, self.buffer = self.buffer[:length], self.buffer[length:]
        return taken

    async def message(self) -> tuple[int, bytes]:
        kind, size = MINI.unpack(await self.take(MINI.size))
        return kind, await self.take(size)

    async def send(self, kind: int, body: bytes = b"") -> None:
        await self.ws.send(MINI.pack(kind, len(body)) + body)


async def link(
    url: str, ticket: str, cookie: str, kind: int, connection_id: int
) -> tuple[Channel, int]:
    """Link a channel as spice-html5 does; its link error or result."""
    ws = await websockets.connect(
        url, subprotocols=["binary", f"ticket.{ticket}"], origin=ORIGIN,
        additional_headers={"Cookie": cookie}, open_timeout=10,
    )  # fmt: skip
    channel = Channel(ws)
    await ws.send(
        build_mess(connection_id=connection_id, channel_type=kind, channel_id=0, common=CAPS)
    )
    size = struct.unpack("<4sIII", await channel.take(HEADER.size))[3]
    reply = parse_reply(await channel.take(size))
    if reply.error != LINK_OK:
        return channel, reply.error
    # Whatever password the client holds: here none at all, encrypted with the relay's key.
    await ws.send(struct.pack("<I", 1) + encrypt_ticket(pub_key=reply.pub_key, password=""))
    return channel, struct.unpack("<I", await channel.take(4))[0]


async def open_main(url: str, ticket: str, cookie: str) -> tuple[Channel, int]:
    main, result = await link(url, ticket, cookie, CHANNEL_MAIN, 0)
    assert result == LINK_OK
    kind, body = await main.message()
    while kind != MSG_MAIN_INIT:
        kind, body = await main.message()
    await main.send(MSGC_ATTACH_CHANNELS)
    return main, struct.unpack_from("<I", body)[0]


async def type_text(inputs: Channel, text: str) -> None:
    for char in text:
        plain = SHIFTED.get(char, char.lower())
        shift = char in SHIFTED or char.isupper()
        codes = ([SHIFT] if shift else []) + [KEYS[plain]]
        # Paced (SPICE has no key delay of its own): a slow guest's keyboard queue must not
        # overflow (KEY_EVENT_S).
        for code in codes:
            await inputs.send(MSGC_KEY_DOWN, struct.pack("<I", code))
            await asyncio.sleep(KEY_EVENT_S)
        for code in reversed(codes):
            await inputs.send(MSGC_KEY_UP, struct.pack("<I", code | 0x80))
            await asyncio.sleep(KEY_EVENT_S)


@pytest.fixture
def spice_desktop(celery_worker, api_for, employee, demo_template) -> Any:
    Template.objects.filter(pk=demo_template.pk).update(console_type=ConsoleType.SPICE)
    launched = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    return wait_for_status(launched.json()["id"], "running")


def test_spice_through_the_relay_types_into_the_guest_and_view_only_cannot(
    relay, employee, helpdesk_user, spice_desktop, hypervisor
) -> None:
    url = f"{relay.url}/ws/spice/{spice_desktop.pk}/"
    # The guest's shell is up (its banner on the screen) before anything is typed.
    wait_for_boot(lambda: hypervisor.screenshot(name=spice_desktop.domain_name))

    async def full_control(ticket: str, cookie: str) -> None:
        main, spice_session = await open_main(url, ticket, cookie)
        # Later channels: the same ticket, already used by the main channel.
        display, shown = await link(url, ticket, cookie, CHANNEL_DISPLAY, spice_session)
        await display.send(MSGC_DISPLAY_INIT, DISPLAY_INIT)
        inputs, typed = await link(url, ticket, cookie, CHANNEL_INPUTS, spice_session)
        assert (shown, typed) == (LINK_OK, LINK_OK)
        await type_text(inputs, f"echo spice-{relay.name} > /dev/ttyS0\n")
        await asyncio.sleep(1)
        for channel in (inputs, display, main):
            await channel.ws.close()

    async def view_only(ticket: str, cookie: str) -> None:
        main, spice_session = await open_main(url, ticket, cookie)
        await main.send(MSGC_AGENT_START, struct.pack("<I", 10))  # dropped by the relay
        inputs, refused = await link(url, ticket, cookie, CHANNEL_INPUTS, spice_session)
        assert refused == LINK_ERR_PERMISSION_DENIED
        await inputs.ws.wait_closed()
        assert inputs.ws.close_code == 4403
        display, shown = await link(url, ticket, cookie, CHANNEL_DISPLAY, spice_session)
        assert shown == LINK_OK
        await display.send(MSGC_DISPLAY_INIT, DISPLAY_INIT)
        await asyncio.sleep(1)
        await display.ws.close()
        await main.ws.close()

    with serial_of(spice_desktop) as serial:
        ticket = mint_ticket(employee, spice_desktop)["ticket"]
        asyncio.run(full_control(ticket, session_cookie(employee)))
        assert serial.line(timeout=30) == f"spice-{relay.name}"
    ticket = mint_ticket(helpdesk_user, spice_desktop, mode="view")["ticket"]
    asyncio.run(view_only(ticket, session_cookie(helpdesk_user)))
    view = _closed(spice_desktop, helpdesk_user)
    assert view.mode == "view" and view.relay == relay.name
    assert view.dropped_messages >= 2  # the inputs channel and the agent message
    assert view.bytes_from_guest > 1000
    full = _closed(spice_desktop, employee)
    assert full.bytes_to_guest > 0


def _closed(desktop: Any, user: Any, timeout: float = 20) -> ConsoleSession:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = ConsoleSession.objects.filter(desktop=desktop, user=user).first()
        if session is not None and session.ended_at is not None:
            return session
        time.sleep(0.25)
    raise AssertionError("the relay did not record the end of the session")


MSG_SET_ACK, MSG_PING, MSGC_ACK_SYNC, MSGC_ACK, MSGC_PONG = 3, 4, 1, 2, 3


async def display_bytes(display: Channel, seconds: float = 3) -> int:
    """What QEMU sends a display channel within `seconds`, acknowledged as a SPICE client
    does (SET_ACK and its window, PING): the server sends no more than a window unacked."""
    loop = asyncio.get_running_loop()
    deadline, got = loop.time() + seconds, 0
    state = display.__dict__.setdefault("acks", {"window": 0, "count": 0})
    while (left := deadline - loop.time()) > 0:
        try:
            display.buffer += bytes(await asyncio.wait_for(display.ws.recv(), left))
        except TimeoutError:
            break
        while len(display.buffer) >= MINI.size:
            kind, size = MINI.unpack_from(display.buffer)
            if len(display.buffer) < MINI.size + size:
                break
            body = display.buffer[MINI.size : MINI.size + size]
            display.buffer = display.buffer[MINI.size + size :]
            got += MINI.size + size
            if kind == MSG_SET_ACK:
                generation, state["window"] = struct.unpack_from("<II", body)
                await display.send(MSGC_ACK_SYNC, struct.pack("<I", generation))
            elif kind == MSG_PING:
                await display.send(MSGC_PONG, body[:12])
            state["count"] += 1
            if state["window"] and state["count"] >= state["window"]:
                state["count"] = 0
                await display.send(MSGC_ACK)
    return got


def test_a_display_channel_closed_before_or_at_its_init_does_not_stop_the_guests_spice(
    relay, employee, spice_desktop, hypervisor
) -> None:
    """QEMU 7.2's SPICE worker dereferences NULL when a display channel closes before it
    was served and a new SPICE session follows at once (docs/threat-model.md). Both
    triggers, through the relay, then a new session at once: the guest's SPICE serves it."""
    url = f"{relay.url}/ws/spice/{spice_desktop.pk}/"
    cookie = session_cookie(employee)
    pid = hypervisor_pid(spice_desktop)

    rounds = 3  # the crash depends on timing: each trigger a few times
    tickets = [mint_ticket(employee, spice_desktop)["ticket"] for _ in range(2 * rounds + 1)]

    async def session(close_display_early: bool, send_init: bool) -> int:
        ticket = tickets.pop()
        main, spice_session = await open_main(url, ticket, cookie)
        display, shown = await link(url, ticket, cookie, CHANNEL_DISPLAY, spice_session)
        assert shown == LINK_OK
        if send_init:
            await display.send(MSGC_DISPLAY_INIT, DISPLAY_INIT)
        got = 0 if close_display_early else await display_bytes(display)
        await display.ws.close()
        await main.ws.close()
        return got

    async def sequence() -> int:
        for _ in range(rounds):
            await session(close_display_early=True, send_init=False)  # closed before its init
            await session(close_display_early=True, send_init=True)  # closed at its init
        return await session(close_display_early=False, send_init=True)

    assert asyncio.run(sequence()) > 1000  # the new session's display is served
    assert hypervisor_pid(spice_desktop) == pid  # the same QEMU, still running


def hypervisor_pid(desktop: Any) -> int:
    """The pid of the desktop's QEMU process (libvirt's pid file)."""
    from pathlib import Path

    return int(Path(f"/run/libvirt/qemu/{desktop.domain_name}.pid").read_text())


def test_owner_and_a_view_only_viewer_share_the_spice_display_and_only_the_owner_types(
    relay, employee, helpdesk_user, spice_desktop, hypervisor
) -> None:
    """SPICE multi-client (vms/hypervisor/xml.py): a help-desk viewer joins while the owner
    works; both get the display, the owner keeps typing, the viewer's keys go nowhere, and
    the owner's session outlives the viewer's."""
    url = f"{relay.url}/ws/spice/{spice_desktop.pk}/"
    wait_for_boot(lambda: hypervisor.screenshot(name=spice_desktop.domain_name))
    owner_ticket = mint_ticket(employee, spice_desktop)["ticket"]
    viewer_ticket = mint_ticket(helpdesk_user, spice_desktop, mode="view")["ticket"]
    owner_cookie, viewer_cookie = session_cookie(employee), session_cookie(helpdesk_user)

    async def together() -> tuple[int, int, int]:
        main, spice_session = await open_main(url, owner_ticket, owner_cookie)
        display, _ = await link(url, owner_ticket, owner_cookie, CHANNEL_DISPLAY, spice_session)
        await display.send(MSGC_DISPLAY_INIT, DISPLAY_INIT)
        inputs, typed = await link(url, owner_ticket, owner_cookie, CHANNEL_INPUTS, spice_session)
        assert typed == LINK_OK
        owner_before = await display_bytes(display)

        # The viewer's own SPICE session, while the owner's stays open.
        v_main, v_session = await open_main(url, viewer_ticket, viewer_cookie)
        assert v_session != spice_session
        v_display, shown = await link(url, viewer_ticket, viewer_cookie, CHANNEL_DISPLAY, v_session)
        await v_display.send(MSGC_DISPLAY_INIT, DISPLAY_INIT)
        _, refused = await link(url, viewer_ticket, viewer_cookie, CHANNEL_INPUTS, v_session)
        assert (shown, refused) == (LINK_OK, LINK_ERR_PERMISSION_DENIED)
        # An inputs channel in the owner's SPICE session is refused to the viewer too.
        _, stolen = await link(url, viewer_ticket, viewer_cookie, CHANNEL_INPUTS, spice_session)
        assert stolen == LINK_ERR_BAD_CONNECTION_ID
        viewer_sees = await display_bytes(v_display)
        await type_text(inputs, "echo owner-types > /dev/ttyS0\n")  # the owner types...
        owner_sees = await display_bytes(display)  # ...and sees it (the shell echoes)
        for channel in (v_display, v_main):
            await channel.ws.close()
        await type_text(inputs, "echo owner-still-types > /dev/ttyS0\n")
        for channel in (inputs, display, main):
            assert channel.ws.close_code is None  # the viewer disconnected nobody
            await channel.ws.close()
        return owner_before, viewer_sees, owner_sees

    with serial_of(spice_desktop) as serial:
        owner_before, viewer_sees, owner_sees = asyncio.run(together())
        assert serial.line(timeout=30) == "owner-types"
        assert serial.line(timeout=30) == "owner-still-types"
    assert owner_before > 1000 and viewer_sees > 1000 and owner_sees > 0
    view = _closed(spice_desktop, helpdesk_user)
    assert view.mode == "view" and view.dropped_messages >= 2
    assert (
        _closed(spice_desktop, employee).close_reason
        != "The desktop's display closed the connection."
    )
