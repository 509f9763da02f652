"""Reaching a guest's SPICE display for one channel: arm it with a one-off password and
complete the channel's link with QEMU (vms.console.spicelink).

Every channel of a SPICE session links (and authenticates) on its own, so each one arms
the display under the desktop's arm lock (QEMU keeps one password per display, and the
lock is held until this channel's link has used it). Existing channels are kept when the
password changes (QEMU's `connected=keep`, libvirt's default).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from vms.console.spicelink import (
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
from vms.hypervisor import GraphicsType
from vms.models import ConsoleSession
from vms.services.consoles import GuestAccess, console_arm
from vms.services.consoles.spice_channels import SpiceAdmission, spice_channel_allowed

HANDSHAKE_TIMEOUT_S = 10.0


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
    """One channel's link with QEMU: its reply (the caps) and link result."""

    reply: LinkReply
    result: int | None
    mini_header: bool
    leftover: bytes


@dataclass
class SpiceGuestStream(SpiceGuest):
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None


def _check(access: GuestAccess) -> None:
    if access.endpoint.type != GraphicsType.spice:
        raise SpiceLinkError("the desktop's display is not SPICE")


def _finish(link: GuestLinkClient) -> SpiceGuest:
    assert link.reply is not None
    mini = link.mini_header if link.reply.error == LINK_OK else False
    return SpiceGuest(link.reply, link.result, mini, link.leftover)


async def spice_guest_connect(session: ConsoleSession, mess: LinkMess) -> SpiceGuestStream:
    """Arm the display and link this channel (asyncio, for the Channels relay)."""
    async with console_arm(session=session) as access:
        _check(access)
        reader, writer = await asyncio.open_connection(access.endpoint.host, access.endpoint.port)
        try:
            link = await asyncio.wait_for(
                _link(reader, writer, mess, access.password), HANDSHAKE_TIMEOUT_S
            )
        except BaseException:
            writer.close()
            raise
    done = _finish(link)
    return SpiceGuestStream(
        done.reply, done.result, done.mini_header, done.leftover, reader, writer
    )


async def _link(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mess: LinkMess, password: str
) -> GuestLinkClient:
    link = GuestLinkClient(mess)
    writer.write(link.start())
    while link.reply is None:
        link.receive(await _read(reader))
    if link.reply.error != LINK_OK:
        return link
    writer.write(link.auth(password))
    await writer.drain()
    while link.result is None:
        link.receive(await _read(reader))
    return link


async def _read(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(4096)
    if not data:
        raise SpiceLinkError("the guest closed the connection during the SPICE link")
    return data


def spice_guest_connect_blocking(
    session: ConsoleSession, mess: LinkMess
) -> tuple[socket.socket, SpiceGuest]:
    """The same for the websockify gateway: a connected socket and the link's outcome."""
    with console_arm(session=session) as access:
        _check(access)
        sock = socket.create_connection(
            (access.endpoint.host, access.endpoint.port), timeout=HANDSHAKE_TIMEOUT_S
        )
        try:
            link = _link_blocking(sock, mess, access.password)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)
    return sock, _finish(link)


def _link_blocking(sock: socket.socket, mess: LinkMess, password: str) -> GuestLinkClient:
    link = GuestLinkClient(mess)
    sock.sendall(link.start())
    while link.reply is None:
        link.receive(_recv(sock))
    if link.reply.error != LINK_OK:
        return link
    sock.sendall(link.auth(password))
    while link.result is None:
        link.receive(_recv(sock))
    return link


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(4096)
    if not data:
        raise SpiceLinkError("the guest closed the connection during the SPICE link")
    return data
