"""Reaching a guest's SPICE display for one channel, in two steps (vms.console.spicelink):

1. `open`: connect to where libvirt says the display listens, send the client's link
   message and read QEMU's link reply (its key and capabilities). The display is not
   armed and QEMU has created nothing yet: closing now is harmless.
2. `auth`: arm the display with a one-off password (under the desktop's arm lock, held
   until this channel's link has used it) and send it, encrypted with QEMU's key; QEMU's
   link result follows. Only now does QEMU create the channel.

Between the two the relay answers its client and, for a display channel, waits for the
client's whole SPICE_MSGC_DISPLAY_INIT (vms.console.spicemsg.DisplayInitGate): QEMU 7.2's
SPICE worker dereferences NULL when a display channel it created closes before the worker
has started serving it and a new SPICE session follows. So a display channel reaches QEMU
only with its init in hand, and the relay keeps QEMU's side open until QEMU has sent the
channel's first bytes (`DISPLAY_FIRST_BYTES_S` at most), whenever its client leaves.

Existing channels are kept when the password changes (QEMU's `connected=keep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from dataclasses import dataclass

from asgiref.sync import sync_to_async

from vms.console.spicelink import (
    CHANNEL_DISPLAY,
    CHANNEL_MAIN,
    LINK_ERR_BAD_CONNECTION_ID,
    LINK_ERR_INVALID_DATA,
    LINK_ERR_PERMISSION_DENIED,
    LINK_OK,
    GuestLinkClient,
    LinkMess,
    LinkReply,
    SpiceLinkError,
)
from vms.hypervisor import ConsoleEndpoint, GraphicsType
from vms.models import ConsoleSession
from vms.services.consoles import GuestAccess, console_arm
from vms.services.consoles.spice_channels import (
    SpiceAdmission,
    spice_channel_allowed,
    spice_endpoint,
)

HANDSHAKE_TIMEOUT_S = 10.0
# How long a closing display channel waits for QEMU's first bytes (they come in
# milliseconds; a QEMU that sends none in this time is not serving the channel at all).
DISPLAY_FIRST_BYTES_S = 5.0


LinkRefusal = tuple[int, str]


def link_refusal(admission: SpiceAdmission, mess: LinkMess) -> LinkRefusal | None:
    """Why this channel's link is refused (a SPICE link error and a close reason), or None."""
    if admission.main and (mess.channel_type != CHANNEL_MAIN or mess.connection_id != 0):
        return LINK_ERR_INVALID_DATA, "A SPICE console starts with its main channel."
    if not admission.main and mess.channel_type == CHANNEL_MAIN:
        return LINK_ERR_INVALID_DATA, "This console ticket was already used."
    if not admission.main and mess.connection_id != admission.spice_session_id:
        return LINK_ERR_BAD_CONNECTION_ID, "This channel is not of this console session."
    if not spice_channel_allowed(mode=admission.session.mode, channel_type=mess.channel_type):
        return LINK_ERR_PERMISSION_DENIED, "View only: this SPICE channel is not open to you."
    return None


@dataclass
class SpiceGuest:
    """One channel's link with QEMU: where, the link state, and whether QEMU has sent
    anything since the link (a display channel must have, before it closes)."""

    link: GuestLinkClient
    endpoint: ConsoleEndpoint
    heard: bool = False

    @property
    def reply(self) -> LinkReply:
        assert self.link.reply is not None
        return self.link.reply

    @property
    def result(self) -> int | None:
        return self.link.result

    @property
    def mini_header(self) -> bool:
        return self.link.mini_header if self.reply.error == LINK_OK else False

    @property
    def must_be_heard(self) -> bool:
        """A linked display channel QEMU has not yet served (see the module docstring)."""
        return (
            self.link.mess.channel_type == CHANNEL_DISPLAY
            and self.result == LINK_OK
            and not self.heard
        )

    def take_leftover(self) -> bytes:
        """What QEMU sent after its link result (already its first channel bytes)."""
        leftover = self.link.leftover
        self.heard = self.heard or bool(leftover)
        return leftover


def _check(endpoint: ConsoleEndpoint) -> None:
    if endpoint.type != GraphicsType.spice:
        raise SpiceLinkError("the desktop's display is not SPICE")


def _same_display(guest: SpiceGuest, access: GuestAccess) -> None:
    if (access.endpoint.host, access.endpoint.port) != (guest.endpoint.host, guest.endpoint.port):
        raise SpiceLinkError("the desktop's display moved during the link")


# --- asyncio (the Channels relay, the SPICE proxy) ------------------------------------------


@dataclass
class SpiceGuestStream(SpiceGuest):
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None


async def spice_guest_open(
    session: ConsoleSession, mess: LinkMess, *, endpoint: ConsoleEndpoint | None = None
) -> SpiceGuestStream:
    """Step 1: connect and read QEMU's link reply (`endpoint`: known already, else asked)."""
    if endpoint is None:
        endpoint = await sync_to_async(spice_endpoint)(session=session)
    _check(endpoint)
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    guest = SpiceGuestStream(GuestLinkClient(mess), endpoint, reader=reader, writer=writer)
    try:
        await spice_guest_hello(guest)
    except BaseException:
        writer.close()
        raise
    return guest


async def spice_guest_hello(guest: SpiceGuestStream) -> None:
    """Step 1 on a connection already open: the link message out, QEMU's reply in."""
    assert guest.reader is not None and guest.writer is not None
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        guest.writer.write(guest.link.start())
        while guest.link.reply is None:
            guest.link.receive(await _read(guest.reader))


async def spice_guest_auth(session: ConsoleSession, guest: SpiceGuestStream) -> int:
    """Step 2: arm the display, send the password, and return QEMU's link result."""
    assert guest.reader is not None and guest.writer is not None
    async with console_arm(session=session) as access:
        _same_display(guest, access)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            guest.writer.write(guest.link.auth(access.password))
            await guest.writer.drain()
            while guest.link.result is None:
                guest.link.receive(await _read(guest.reader))
    return guest.link.result


async def spice_guest_close(guest: SpiceGuestStream) -> None:
    """Close QEMU's side, once QEMU has served a display channel (or given up on it)."""
    assert guest.reader is not None and guest.writer is not None
    if guest.must_be_heard:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            async with asyncio.timeout(DISPLAY_FIRST_BYTES_S):
                await guest.reader.read(1)
    guest.writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await guest.writer.wait_closed()


async def _read(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(4096)
    if not data:
        raise SpiceLinkError("the guest closed the connection during the SPICE link")
    return data


# --- blocking (the websockify gateway) ---------------------------------------------------


@dataclass
class SpiceGuestSocket(SpiceGuest):
    sock: socket.socket | None = None


def spice_guest_open_blocking(session: ConsoleSession, mess: LinkMess) -> SpiceGuestSocket:
    """Step 1 for the gateway."""
    endpoint = spice_endpoint(session=session)
    _check(endpoint)
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=HANDSHAKE_TIMEOUT_S)
    guest = SpiceGuestSocket(GuestLinkClient(mess), endpoint, sock=sock)
    try:
        sock.sendall(guest.link.start())
        while guest.link.reply is None:
            guest.link.receive(_recv(sock))
    except BaseException:
        sock.close()
        raise
    return guest


def spice_guest_auth_blocking(session: ConsoleSession, guest: SpiceGuestSocket) -> int:
    """Step 2 for the gateway."""
    assert guest.sock is not None
    with console_arm(session=session) as access:
        _same_display(guest, access)
        guest.sock.sendall(guest.link.auth(access.password))
        while guest.link.result is None:
            guest.link.receive(_recv(guest.sock))
    guest.sock.settimeout(None)
    return guest.link.result


def spice_guest_close_blocking(guest: SpiceGuestSocket, *, heard: bool) -> None:
    """Close QEMU's side, once QEMU has served a display channel (or given up on it)."""
    assert guest.sock is not None
    guest.heard = guest.heard or heard
    if guest.must_be_heard:
        with contextlib.suppress(OSError):
            guest.sock.setblocking(False)
            if select.select([guest.sock], [], [], DISPLAY_FIRST_BYTES_S)[0]:
                guest.sock.recv(1)
    with contextlib.suppress(OSError):
        guest.sock.shutdown(socket.SHUT_RDWR)
    guest.sock.close()


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    if not data:
        raise SpiceLinkError("the guest closed the connection during the SPICE link")
    return data
