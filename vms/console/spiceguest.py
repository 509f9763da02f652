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

from vms.console.spicelink import LINK_OK, GuestLinkClient, LinkMess, LinkReply, SpiceLinkError
from vms.hypervisor import GraphicsType
from vms.models import ConsoleSession
from vms.services.consoles import GuestAccess, console_arm

HANDSHAKE_TIMEOUT_S = 10.0


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
