"""Reaching a guest's display: arm it with a one-off password and authenticate to it.

QEMU keeps one VNC password per display, so the handshake that uses the password runs
inside `console_arm`, which holds the desktop's arm lock (vms.services.consoles.arming).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from vms.console.rfb import SECURITY_VNC_AUTH, RfbProtocolError, UpstreamHandshake
from vms.models import ConsoleSession
from vms.services.consoles import GuestAccess, console_arm

HANDSHAKE_TIMEOUT_S = 10.0


@dataclass
class GuestLink:
    """An authenticated RFB connection to the guest, past ServerInit."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server_init: bytes
    leftover: bytes


async def guest_connect(session: ConsoleSession) -> GuestLink:
    """Arm the guest and complete the VNC handshake (asyncio, for the Channels relay)."""
    async with console_arm(session=session) as access:
        return await asyncio.wait_for(_handshake(access), HANDSHAKE_TIMEOUT_S)


async def _handshake(access: GuestAccess) -> GuestLink:
    reader, writer = await asyncio.open_connection(access.endpoint.host, access.endpoint.port)
    handshake = UpstreamHandshake(access.password)
    while not handshake.done:
        data = await reader.read(4096)
        if not data:
            writer.close()
            raise RfbProtocolError("the guest closed the connection during the handshake")
        reply = handshake.receive(data)
        if reply:
            writer.write(reply)
            await writer.drain()
    _require_password(handshake)
    return GuestLink(reader, writer, handshake.server_init, handshake.leftover)


def guest_connect_blocking(session: ConsoleSession) -> tuple[socket.socket, bytes, bytes]:
    """The same for the websockify gateway: a connected socket, ServerInit and leftover."""
    with console_arm(session=session) as access:
        return _handshake_blocking(access)


def _handshake_blocking(access: GuestAccess) -> tuple[socket.socket, bytes, bytes]:
    sock = socket.create_connection(
        (access.endpoint.host, access.endpoint.port), timeout=HANDSHAKE_TIMEOUT_S
    )
    handshake = UpstreamHandshake(access.password)
    while not handshake.done:
        data = sock.recv(4096)
        if not data:
            sock.close()
            raise RfbProtocolError("the guest closed the connection during the handshake")
        reply = handshake.receive(data)
        if reply:
            sock.sendall(reply)
    _require_password(handshake)
    sock.settimeout(None)
    return sock, handshake.server_init, handshake.leftover


def _require_password(handshake: UpstreamHandshake) -> None:
    """Refuse a display that let us in without a password: it would let anyone in."""
    if handshake.security_type != SECURITY_VNC_AUTH:
        raise RfbProtocolError("the guest's display does not require a password")
