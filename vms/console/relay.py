"""The same-origin console relay: a Channels consumer between noVNC and QEMU's VNC server.

On connect it admits the browser (Origin, one-time ticket, the user's rights, a running
desktop), arms the guest with a one-off VNC password, authenticates to QEMU itself, and
offers the browser an RFB session without authentication. Then it relays bytes both ways;
browser-to-guest bytes pass through the RFB message filter, which in view-only mode drops
every key, pointer and clipboard event. It closes when the desktop stops, when the user
loses access, or on malformed input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import DatabaseError

from vms.console.guest import GuestLink, guest_connect
from vms.console.rfb import ClientMessageFilter, DownstreamHandshake, RfbProtocolError
from vms.models import ConsoleMode, ConsoleSession, DesktopStatus
from vms.services.consoles import (
    BINARY_PROTOCOL,
    CLOSE_PROTOCOL,
    CLOSE_STOPPED,
    CLOSE_UNREACHABLE,
    ConsoleClosed,
    DisplayUnreachable,
    Knock,
    console_admit,
    console_session_close,
    console_session_group,
    console_session_keep,
)
from vms.services.desktops.events import desktop_group
from vms.web.client import client_address, scope_header, scope_is_secure

if TYPE_CHECKING:
    from asgiref.typing import WebSocketReceiveEvent

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
RELAY_NAME = "channels"


class ConsoleRelayConsumer(AsyncWebsocketConsumer):  # type: ignore[misc,unused-ignore]
    """One browser's console session (see the module docstring)."""

    guest: GuestLink | None = None
    session_id: int | None = None
    browser_side: DownstreamHandshake
    client_filter: ClientMessageFilter
    bytes_to_guest = 0
    bytes_from_guest = 0
    close_reason = "closed by the browser"

    async def connect(self) -> None:
        await self.accept(subprotocol=BINARY_PROTOCOL)
        try:
            opened = await database_sync_to_async(console_admit)(
                knock=scope_knock(self.scope), relay=RELAY_NAME
            )
        except ConsoleClosed as refusal:
            await self.close(code=refusal.code, reason=refusal.reason)
            return
        self.session_id = opened.pk
        self.desktop_id = str(opened.desktop_id)
        self.client_filter = ClientMessageFilter(view_only=opened.mode == ConsoleMode.VIEW)
        await self._join_guest(opened)

    async def _join_guest(self, session: ConsoleSession) -> None:
        try:
            self.guest = await guest_connect(session)
        except (OSError, RfbProtocolError, TimeoutError, DisplayUnreachable) as exc:
            log.warning("console session %s: guest display unreachable: %s", self.session_id, exc)
            await self._close(CLOSE_UNREACHABLE, "The desktop's display did not answer.")
            return
        await self.channel_layer.group_add(desktop_group(self.desktop_id), self.channel_name)
        # The owner's End button reaches this relay through the session's own group.
        await self.channel_layer.group_add(console_session_group(session.pk), self.channel_name)
        self.browser_side = DownstreamHandshake()
        await self.send(bytes_data=self.browser_side.start())
        # The guest's ServerInit goes to the browser as soon as its ClientInit arrives.
        self.browser_side.server_init(self.guest.server_init)
        self.tasks = [
            asyncio.create_task(self._guest_to_browser()),
            asyncio.create_task(self._watch_access()),
        ]

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels hops to a thread before every message to close stale database
        # connections; the byte pump touches no database, and the hop halved throughput
        # (bench/README.md). Every other message keeps the default.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(cast("WebSocketReceiveEvent", message))
            return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.guest is None or not bytes_data:
            return
        try:
            if not self.browser_side.done:
                await self._handshake(bytes_data)
            else:
                await self._to_guest(self.client_filter.feed(bytes_data))
        except RfbProtocolError as exc:
            await self._close(CLOSE_PROTOCOL, f"Console protocol error: {exc}")

    async def _handshake(self, data: bytes) -> None:
        reply = self.browser_side.receive(data)
        if reply:
            await self.send(bytes_data=reply)
        if self.browser_side.done:
            await self._to_guest(self.client_filter.feed(self.browser_side.leftover))

    async def _to_guest(self, data: bytes) -> None:
        if data and self.guest is not None:
            self.guest.writer.write(data)
            self.bytes_to_guest += len(data)
            await self.guest.writer.drain()  # back-pressure: wait while QEMU is slow

    async def _guest_to_browser(self) -> None:
        assert self.guest is not None
        if self.guest.leftover:
            await self._from_guest(self.guest.leftover)
        while data := await self.guest.reader.read(READ_CHUNK):
            await self._from_guest(data)
        await self._close(CLOSE_STOPPED, "The desktop's display closed the connection.")

    async def _from_guest(self, data: bytes) -> None:
        self.bytes_from_guest += len(data)
        await self.send(bytes_data=data)

    async def _watch_access(self) -> None:
        from django.conf import settings

        session_id = self.session_id
        assert session_id is not None
        while True:
            await asyncio.sleep(settings.CONSOLE_RECHECK_S)
            try:
                closing = await database_sync_to_async(console_session_keep)(
                    session_id=session_id, relay=RELAY_NAME
                )
            except DatabaseError:
                # The database is away for a moment: keep watching rather than stop.
                log.exception("console session %s: access re-check failed", self.session_id)
                continue
            if closing is not None:
                await self._close(closing.code, closing.reason)
                return

    async def desktop_changed(self, event: dict[str, Any]) -> None:
        """Group message from the services: close when the desktop stops running."""
        if event["desktop"]["status"] != DesktopStatus.RUNNING:
            await self._close(CLOSE_STOPPED, f"The desktop is {event['desktop']['status']}.")

    async def console_watchers(self, event: dict[str, Any]) -> None:
        """Group message for the owner's pages; a relay has nothing to do with it."""

    async def console_session_ended(self, event: dict[str, Any]) -> None:
        """Group message from `console_session_end`: the owner ended this session."""
        await self._close(int(event["code"]), str(event["reason"]))

    async def _close(self, code: int, reason: str) -> None:
        self.close_reason = reason
        await self.close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        for task in getattr(self, "tasks", []):
            if task is not asyncio.current_task():
                task.cancel()
        if self.guest is not None:
            self.guest.writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self.guest.writer.wait_closed()
        if self.session_id is not None:
            await self.channel_layer.group_discard(
                desktop_group(self.desktop_id), self.channel_name
            )
            await self.channel_layer.group_discard(
                console_session_group(self.session_id), self.channel_name
            )
            await database_sync_to_async(console_session_close)(
                session_id=self.session_id,
                reason=self.close_reason,
                bytes_to_guest=self.bytes_to_guest,
                bytes_from_guest=self.bytes_from_guest,
                dropped_messages=self.client_filter.dropped_messages,
            )


def scope_knock(scope: Mapping[str, Any]) -> Knock:
    return Knock(
        origin=scope_header(scope, b"origin"),
        host=scope_header(scope, b"host"),
        secure=scope_is_secure(scope),
        protocols=scope.get("subprotocols", []),
        source_ip=_ip(scope),
        desktop_id=str(scope["url_route"]["kwargs"]["desktop_id"]),
        session_user_id=_user_id(scope),
    )


def _user_id(scope: Mapping[str, Any]) -> int | None:
    user = scope.get("user")
    return user.pk if user is not None and user.is_authenticated else None


def _ip(scope: Mapping[str, Any]) -> str | None:
    """The browser's address: the peer's, or the one a trusted proxy reports for it (the
    same rule as the API's, so address-bound tickets match)."""
    client = scope.get("client")
    if not client:
        return None
    # Every X-Forwarded-For line, in order, as Django joins them for the API.
    forwarded_for = ",".join(
        bytes(value).decode("latin-1")
        for key, value in scope.get("headers", [])
        if key == b"x-forwarded-for"
    )
    return client_address(remote_addr=str(client[0]), forwarded_for=forwarded_for)
