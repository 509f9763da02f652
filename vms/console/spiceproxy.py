"""The SPICE proxy's transport: HTTP CONNECT for remote-viewer, as oVirt's SPICE proxy.

It reads one CONNECT request (bounded in size and time), asks the console rules
(`vms.services.consoles.spiceproxy`) whether it may go through, then terminates the
channel's SPICE link on both sides (the client's password is the file's display token,
checked here; QEMU gets a one-off password, vms.console.spiceguest), then joins the client
and the guest's display and counts the bytes. Every refusal is an HTTP status with a short
reason; nothing secret is logged. One asyncio process; `manage.py spiceproxy` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from vms.console.spiceguest import (
    SpiceGuestStream,
    spice_guest_auth,
    spice_guest_close,
    spice_guest_hello,
)
from vms.console.spicelink import (
    CHANNEL_DISPLAY,
    CHANNEL_MAIN,
    LINK_ERR_BAD_CONNECTION_ID,
    LINK_ERR_PERMISSION_DENIED,
    LINK_OK,
    BrowserLink,
    GuestLinkClient,
    LinkMess,
    SpiceLinkError,
    decrypt_ticket,
)
from vms.console.spicemsg import DisplayInitGate, MainInitWatcher, SpiceMessageError
from vms.hypervisor import ConsoleEndpoint, GraphicsType
from vms.services.consoles import DisplayUnreachable
from vms.services.consoles.spiceproxy import (
    ProxyRefused,
    SpiceSet,
    credential_key,
    proxy_token,
    spice_display_token_ok,
    spice_set_channel_refusal,
    spice_set_claim,
    spice_set_end,
    spice_set_join,
    spice_set_keep,
)

log = logging.getLogger(__name__)
HEADER_LIMIT = 8192  # the whole request head; remote-viewer's is ~200 bytes
GUEST_CONNECT_TIMEOUT_S = 5.0
CHUNK = 65536
RECHECK_FAILURES_TOLERATED = 3  # then the set closes: no console goes on unchecked
T = TypeVar("T")


@dataclass(frozen=True)
class ConnectRequest:
    """What a client asked for: where to, and its headers (names in lower case)."""

    host: str
    port: int
    headers: dict[str, str]


@dataclass
class LiveSet:
    """A file's connection set as the proxy carries it."""

    spice_set: SpiceSet
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    end_reason: str = "remote-viewer disconnected"
    recheck: asyncio.Task[None] | None = None
    aborted: bool = False

    def abort(self, reason: str) -> None:
        """Close every connection of the set (their handlers then end it); none joins."""
        self.end_reason, self.aborted = reason, True
        for writer in list(self.writers):
            writer.close()


async def in_thread(function: Callable[..., T], **kwargs: object) -> T:
    """Run blocking console rules (ORM, Redis, libvirt) off the event loop."""

    def call() -> T:
        close_old_connections()
        return function(**kwargs)

    return await sync_to_async(call)()


def parse_request(head: bytes) -> ConnectRequest:
    """The CONNECT request in `head` (up to the blank line), or ProxyRefused."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise ProxyRefused(400, "Malformed request.") from None
    if method != "CONNECT":
        raise ProxyRefused(405, "This is a SPICE proxy: CONNECT only.")
    if not version.startswith("HTTP/1."):
        raise ProxyRefused(400, "HTTP/1.x only.")
    host, sep, port_text = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProxyRefused(400, "CONNECT needs host:port.")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return ConnectRequest(host=host, port=int(port_text), headers=headers)


def response(status: int, reason: str = "") -> bytes:
    """An HTTP/1.1 answer with a short plain-text body."""
    phrase = HTTPStatus(status).phrase
    body = f"{reason}\n".encode() if reason else b""
    head = [f"HTTP/1.1 {status} {phrase}"]
    if status == 407:
        head.append('Proxy-Authenticate: Basic realm="desktop-portal"')
    if status == 405:
        head.append("Allow: CONNECT")
    if status != 200:
        head += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class SpiceProxy:
    """The proxy's state: open connections, and the live connection sets by credential."""

    def __init__(
        self, *, max_connections: int, handshake_timeout_s: float, recheck_s: float
    ) -> None:
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self.recheck_s = recheck_s
        self.open_connections = 0
        self.sets: dict[str, LiveSet] = {}
        self._claims: dict[str, asyncio.Event] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    # -- one client connection ------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = _peer_ip(writer)
        try:
            if self.open_connections >= self.max_connections:
                await _refuse(writer, peer, None, ProxyRefused(503, "The proxy is full."))
                return
            self.open_connections += 1
            try:
                await self._serve(reader, writer, peer)
            finally:
                self.open_connections -= 1
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str | None
    ) -> None:
        request: ConnectRequest | None = None
        try:
            request = parse_request(await self._read_head(reader))
            live = await self._admit(request, peer)
        except ProxyRefused as refused:
            await _refuse(writer, peer, request, refused)
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception:  # a bug or an outage: the client gets a 500, the log the trace
            log.exception("SPICE proxy: admitting a CONNECT failed")
            await _refuse(writer, peer, request, ProxyRefused(500, "The proxy failed; try again."))
            return
        try:
            await self._carry(live, request, reader, writer)
        finally:
            await self._leave(live)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                return await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise ProxyRefused(408, "The request took too long.") from None
        except asyncio.LimitOverrunError:
            raise ProxyRefused(431, "The request head is too large.") from None

    async def _admit(self, request: ConnectRequest, peer: str | None) -> LiveSet:
        """Join the credential's open set, or open it (one claim at a time per file)."""
        token = proxy_token(request.headers.get("proxy-authorization"))
        key = credential_key(token)
        while key in self._claims:  # the set's first CONNECT is still being checked
            await self._claims[key].wait()
        live = self.sets.get(key)
        if live is not None and live.aborted:
            raise ProxyRefused(410, live.end_reason)
        if live is not None:
            spice_set_join(live.spice_set, host=request.host, port=request.port)
        else:
            live = await self._claim(key, token, request, peer)
        live.spice_set.connections += 1
        live.spice_set.opened += 1
        return live

    async def _claim(
        self, key: str, token: str, request: ConnectRequest, peer: str | None
    ) -> LiveSet:
        self._claims[key] = done = asyncio.Event()
        try:
            spice_set = await in_thread(
                spice_set_claim, token=token, host=request.host, port=request.port, source_ip=peer
            )
            live = self.sets[key] = LiveSet(spice_set)
            live.recheck = asyncio.create_task(self._recheck(live))
            log.info("SPICE proxy: session %s opened from %s", spice_set.session_id, peer)
            return live
        finally:
            del self._claims[key]
            done.set()

    # -- carrying bytes ---------------------------------------------------------------------

    async def _carry(
        self,
        live: LiveSet,
        request: ConnectRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        spice_set = live.spice_set
        try:
            async with asyncio.timeout(GUEST_CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(spice_set.host, request.port)
        except (OSError, TimeoutError) as exc:
            log.warning("SPICE proxy: session %s: guest unreachable: %s", spice_set.session_id, exc)
            live.end_reason = "guest unreachable"
            await _refuse(writer, None, request, ProxyRefused(502, "The display is unreachable."))
            return
        live.writers |= {writer, up_writer}
        endpoint = ConsoleEndpoint(GraphicsType.spice, spice_set.host, request.port, None)
        guest: SpiceGuestStream | None = None
        try:
            if live.aborted:  # the set closed while this connection reached the guest
                return
            writer.write(response(200))
            await writer.drain()
            async with asyncio.timeout(self.handshake_timeout_s):
                mess, browser = await _client_link(reader)
                guest = SpiceGuestStream(
                    GuestLinkClient(mess), endpoint, reader=up_reader, writer=up_writer
                )
                first = await self._link(live, guest, browser, reader, writer)
            if first is not None:
                await _pipe_both(reader, writer, guest, first, live)
        except (SpiceLinkError, SpiceMessageError, TimeoutError, DisplayUnreachable) as exc:
            log.info("SPICE proxy: session %s: channel closed: %s", spice_set.session_id, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            live.writers -= {writer, up_writer}
            if guest is not None:
                await spice_guest_close(guest)
            else:
                up_writer.close()

    async def _link(
        self,
        live: LiveSet,
        guest: SpiceGuestStream,
        browser: BrowserLink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bytes | None:
        """Terminate one channel's SPICE link on both sides: the client gets QEMU's reply
        with the proxy's key and must answer with the file's display token; QEMU gets a
        one-off password (a display channel only with its display init in hand). The
        client's first bytes after the link, or None when the link was refused."""
        spice_set, mess = live.spice_set, guest.link.mess
        refusal = spice_set_channel_refusal(
            spice_set, channel_type=mess.channel_type, connection_id=mess.connection_id
        )
        if refusal:
            log.warning("SPICE proxy: session %s: %s", spice_set.session_id, refusal)
            writer.write(browser.refuse(LINK_ERR_BAD_CONNECTION_ID))
            return None
        await spice_guest_hello(guest)
        if guest.reply.error != LINK_OK:
            writer.write(browser.refuse(guest.reply.error))
            return None
        writer.write(browser.reply(guest.reply))
        while not browser.ticket_received:
            browser.receive(await _read_client(reader))
        if not spice_display_token_ok(spice_set, password=_decrypted(browser.ticket)):
            log.warning("SPICE proxy: session %s: a wrong display token", spice_set.session_id)
            writer.write(browser.result(LINK_ERR_PERMISSION_DENIED))
            await writer.drain()
            live.abort("a wrong display password was given")
            return None
        first = browser.leftover
        if mess.channel_type == CHANNEL_DISPLAY:
            writer.write(browser.result(LINK_OK))
            gate = DisplayInitGate(mini_header=guest.mini_header)
            complete = gate.feed(first)
            while complete is None:
                complete = gate.feed(await _read_client(reader))
            first = complete
        assert spice_set.session is not None
        result = await spice_guest_auth(spice_set.session, guest)
        if mess.channel_type != CHANNEL_DISPLAY:
            writer.write(browser.result(result))
        return first if result == LINK_OK else None

    async def _leave(self, live: LiveSet) -> None:
        """One connection of the set closed; the last one ends the set and its session."""
        live.spice_set.connections -= 1
        if live.spice_set.connections > 0:
            return
        self.sets.pop(live.spice_set.key, None)
        if live.recheck is not None:
            live.recheck.cancel()
        await in_thread(spice_set_end, spice_set=live.spice_set, reason=live.end_reason)
        spice_set = live.spice_set
        log.info(
            "SPICE proxy: session %s ended after %s connections, %s bytes in, %s out: %s",
            spice_set.session_id,
            spice_set.opened,
            spice_set.bytes_to_guest,
            spice_set.bytes_from_guest,
            live.end_reason,
        )

    async def _recheck(self, live: LiveSet) -> None:
        """Every CONSOLE_RECHECK_S: the user may still see the running desktop, or the set
        closes (the owner ended it, access was lost, the desktop stopped, or the check
        failed several times running)."""
        failures = 0
        while failures < RECHECK_FAILURES_TOLERATED:
            await asyncio.sleep(self.recheck_s)
            try:
                closed = await in_thread(spice_set_keep, spice_set=live.spice_set)
            except Exception:  # the database is away: try again, but not forever
                log.exception("SPICE proxy: session %s: re-check failed", live.spice_set.session_id)
                failures += 1
                continue
            if closed is not None:
                live.abort(closed.reason)
                return
            failures = 0
        live.abort("its rights could not be re-checked")

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close every set (recorded as ended by the proxy) and wait for the handlers."""
        for live in list(self.sets.values()):
            live.abort("the SPICE proxy stopped")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=10)


async def _client_link(reader: asyncio.StreamReader) -> tuple[LinkMess, BrowserLink]:
    browser = BrowserLink()
    while browser.mess is None:
        browser.receive(await _read_client(reader))
    return browser.mess, browser


async def _read_client(reader: asyncio.StreamReader) -> bytes:
    data = await reader.read(4096)
    if not data:
        raise SpiceLinkError("the client closed the connection during the SPICE link")
    return data


def _decrypted(ticket: bytes) -> bytes:
    try:
        return decrypt_ticket(ticket)
    except ValueError:  # not encrypted with the proxy's key
        return b""


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    guest: SpiceGuestStream,
    first: bytes,
    live: LiveSet,
) -> None:
    """Copy both ways until either side ends; count the bytes into the set; learn the
    SPICE session id from the set's main channel."""
    spice_set = live.spice_set
    assert guest.reader is not None and guest.writer is not None
    watcher = (
        MainInitWatcher(mini_header=guest.mini_header)
        if guest.link.mess.channel_type == CHANNEL_MAIN
        else None
    )

    def to_guest(data: bytes) -> None:
        spice_set.bytes_to_guest += len(data)

    def from_guest(data: bytes) -> None:
        guest.heard = True
        spice_set.bytes_from_guest += len(data)
        if watcher is not None and watcher.session_id is None:
            spice_set.spice_session_id = watcher.feed(data)

    if first:
        to_guest(first)
        guest.writer.write(first)
    if leftover := guest.take_leftover():
        from_guest(leftover)
        writer.write(leftover)
    tasks = [
        asyncio.create_task(_pipe(reader, guest.writer, to_guest)),
        asyncio.create_task(_pipe(guest.reader, writer, from_guest)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, seen: Callable[[bytes], None]
) -> None:
    try:
        while data := await source.read(CHUNK):
            seen(data)
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError, SpiceMessageError):
        return


async def _refuse(
    writer: asyncio.StreamWriter,
    peer: str | None,
    request: ConnectRequest | None,
    refused: ProxyRefused,
) -> None:
    target = f"{request.host}:{request.port}" if request else "-"
    log.info("SPICE proxy: %s from %s refused %s: %s", target, peer, refused.status, refused.reason)
    try:
        writer.write(response(refused.status, refused.reason))
        await writer.drain()
    except (ConnectionError, OSError):
        return


def _peer_ip(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else None


async def serve(*, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then close every set and return."""
    proxy = SpiceProxy(
        max_connections=settings.SPICE_PROXY_MAX_CONNECTIONS,
        handshake_timeout_s=settings.CONSOLE_HANDSHAKE_TIMEOUT_S,
        recheck_s=float(settings.CONSOLE_RECHECK_S),
    )
    server = await asyncio.start_server(proxy.handle, host, port, limit=HEADER_LIMIT)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with server:
        await stopping.wait()
        server.close()
        await proxy.stop()
