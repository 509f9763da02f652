"""Reaching a guest's display: arm it with a one-off password and authenticate to it.

QEMU keeps one VNC password per display, so the arm step and the handshake that uses
the password run under a per-desktop Redis lock, shared by both relays (and processes).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings

from vms.console.rfb import SECURITY_VNC_AUTH, RfbProtocolError, UpstreamHandshake
from vms.models import ConsoleSession
from vms.services.consoles.arming import (
    ARM_LOCK_TIMEOUT_S,
    GuestAccess,
    arm_lock_name,
    console_arm,
    console_arm_lock,
)

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
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    try:
        async with client.lock(
            arm_lock_name(session.desktop_id),
            timeout=ARM_LOCK_TIMEOUT_S,
            blocking_timeout=ARM_LOCK_TIMEOUT_S,
        ):
            access = await sync_to_async(console_arm)(session=session)
            return await asyncio.wait_for(_handshake(access), HANDSHAKE_TIMEOUT_S)
    finally:
        await client.aclose()


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
    with console_arm_lock(desktop_id=session.desktop_id):
        access = console_arm(session=session)
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
