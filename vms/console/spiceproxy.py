"""The SPICE proxy's transport: HTTP CONNECT for remote-viewer, as oVirt's SPICE proxy.

It reads one CONNECT request (bounded in size and time), asks the console rules
(`vms.services.consoles.spiceproxy`) whether it may go through, then terminates the
channel's SPICE link on both sides (the client's password is the file's display token,
checked here; QEMU gets a one-off password, vms.console.spiceguest), then joins the client
and the guest's display and counts the bytes. Every refusal is an HTTP status with a short
reason; nothing secret is logged. One asyncio process; `manage.py spiceproxy` runs it.

With the portal's SPICE CA (SPICE_TLS_DIR) a file's channels are TLS end to end: after the
CONNECT's 200 the proxy is the TLS server remote-viewer verifies (`ca=`, `host-subject=`),
and it reaches QEMU's `tls-port` as a TLS client checking QEMU's certificate against the
same CA.

Blocking calls (database, Redis, libvirt) run on one thread per desktop (`DesktopThreads`):
a hypervisor that does not answer holds up only its own desktops' connections. A user may
hold at most SPICE_PROXY_MAX_CONNECTIONS_PER_USER connections, the proxy
SPICE_PROXY_MAX_CONNECTIONS in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

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
from vms.console.spicemsg import (
    DisplayInitGate,
    MainInitWatcher,
    MessageCutter,
    SpiceMessageError,
)
from vms.hypervisor import ConsoleEndpoint, GraphicsType
from vms.services.consoles import DisplayUnreachable
from vms.services.consoles.spiceproxy import (
    DISPLAY_CERT_NAME,
    TLS_CA,
    TLS_PROXY_CERT,
    TLS_PROXY_KEY,
    ProxyRefused,
    SpiceSet,
    credential_key,
    proxy_token,
    spice_display_token_ok,
    spice_grant_owner,
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


@dataclass(frozen=True)
class ProxyTls:
    """The proxy's two TLS roles: server to remote-viewer, client to QEMU's tls-port."""

    for_clients: ssl.SSLContext
    for_guests: ssl.SSLContext


def proxy_tls(directory: Path) -> ProxyTls:
    """TLS contexts from the portal's SPICE CA directory (scripts/setup.sh makes it)."""
    for_clients = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for_clients.minimum_version = ssl.TLSVersion.TLSv1_2
    for_clients.load_cert_chain(directory / TLS_PROXY_CERT, directory / TLS_PROXY_KEY)
    for_guests = ssl.create_default_context(cafile=str(directory / TLS_CA))
    for_guests.minimum_version = ssl.TLSVersion.TLSv1_2
    return ProxyTls(for_clients=for_clients, for_guests=for_guests)


class DesktopThreads:
    """One worker thread per desktop for the blocking calls of its connections (claims,
    arming, re-checks, ends), made while the desktop has any and ended after: calls for one
    desktop keep their order, and a hypervisor that does not answer delays only them."""

    def __init__(self) -> None:
        self._threads: dict[str, tuple[ThreadPoolExecutor, int]] = {}

    @contextlib.asynccontextmanager
    async def on(self, desktop_id: str) -> AsyncIterator[None]:
        """Within the block, sync_to_async calls run on the desktop's thread."""
        executor, users = self._threads.get(desktop_id) or (self._new(desktop_id), 0)
        self._threads[desktop_id] = (executor, users + 1)
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield
        finally:
            executor, users = self._threads[desktop_id]
            if users > 1:
                self._threads[desktop_id] = (executor, users - 1)
            else:
                del self._threads[desktop_id]
                executor.submit(connections.close_all)  # the thread's database connection
                executor.shutdown(wait=False)

    @staticmethod
    def _new(desktop_id: str) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"desktop-{desktop_id[:8]}")


class SpiceProxy:
    """The proxy's state: open connections, and the live connection sets by credential."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_user: int,
        handshake_timeout_s: float,
        recheck_s: float,
        tls: ProxyTls | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self.handshake_timeout_s = handshake_timeout_s
        self.recheck_s = recheck_s
        self.tls = tls
        self.open_connections = 0
        self.user_connections: Counter[int] = Counter()
        self.threads = DesktopThreads()
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
            token = proxy_token(request.headers.get("proxy-authorization"))
            owner = await asyncio.to_thread(spice_grant_owner, token=token)
            self._count_user(owner.user_id)
            log.info(
                "SPICE proxy: admitting a connection of user %s to desktop %s",
                owner.user_id,
                owner.desktop_id,
            )
        except ProxyRefused as refused:
            await _refuse(writer, peer, request, refused)
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except Exception:  # a bug or an outage: the client gets a 500, the log the trace
            log.exception("SPICE proxy: reading a CONNECT failed")
            await _refuse(writer, peer, request, ProxyRefused(500, "The proxy failed; try again."))
            return
        try:
            async with self.threads.on(owner.desktop_id):
                await self._serve_admitted(token, request, reader, writer, peer)
        finally:
            self.user_connections[owner.user_id] -= 1
            if self.user_connections[owner.user_id] <= 0:
                del self.user_connections[owner.user_id]

    def _count_user(self, user_id: int) -> None:
        """One more connection of `user_id`, or 429 beyond their share of the proxy."""
        if self.user_connections[user_id] >= self.max_per_user:
            raise ProxyRefused(
                429,
                f"You have {self.max_per_user} SPICE connections open, the most one user may;"
                " close a viewer and try again.",
            )
        self.user_connections[user_id] += 1

    async def _serve_admitted(
        self,
        token: str,
        request: ConnectRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str | None,
    ) -> None:
        """The rest of a CONNECT, on its desktop's thread: admit, carry, leave."""
        try:
            live = await self._admit(token, request, peer)
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

    async def _admit(self, token: str, request: ConnectRequest, peer: str | None) -> LiveSet:
        """Join the credential's open set, or open it (one claim at a time per file)."""
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
            # Its own task, outside this connection's thread context (it outlives it).
            live.recheck = asyncio.create_task(self._recheck(live), context=contextvars.Context())
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
                up_reader, up_writer = await self._open_guest(spice_set)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("SPICE proxy: session %s: guest unreachable: %s", spice_set.session_id, exc)
            live.end_reason = "guest unreachable"
            await _refuse(writer, None, request, ProxyRefused(502, "The display is unreachable."))
            return
        live.writers |= {writer, up_writer}
        raw_writer = writer  # the TCP connection's own (TLS, if any, gets streams of its own)
        endpoint = ConsoleEndpoint(
            GraphicsType.spice, spice_set.host, spice_set.port, spice_set.tls_port
        )
        guest: SpiceGuestStream | None = None
        try:
            if live.aborted:  # the set closed while this connection reached the guest
                return
            writer.write(response(200))
            await writer.drain()
            async with asyncio.timeout(self.handshake_timeout_s):
                if spice_set.client_tls:
                    reader, writer = await self._client_tls(reader, writer)
                    live.writers.add(writer)
                mess, browser = await _client_link(reader)
                guest = SpiceGuestStream(
                    GuestLinkClient(mess), endpoint, reader=up_reader, writer=up_writer
                )
                first = await self._link(live, guest, browser, reader, writer)
            if first is not None:
                await _pipe_both(reader, writer, guest, first, live)
        except (
            SpiceLinkError,
            SpiceMessageError,
            TimeoutError,
            DisplayUnreachable,
            ssl.SSLError,
        ) as exc:
            log.info("SPICE proxy: session %s: channel closed: %s", spice_set.session_id, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            live.writers -= {writer, raw_writer, up_writer}
            writer.close()
            if guest is not None:
                await spice_guest_close(guest)
            else:
                up_writer.close()

    async def _open_guest(
        self, spice_set: SpiceSet
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the set's display: QEMU's TLS port with its certificate checked
        against the portal's CA, else its plain port."""
        if spice_set.guest_tls:
            if self.tls is None:
                raise ssl.SSLError("the file wants TLS to QEMU, and this proxy has no CA")
            return await asyncio.open_connection(
                spice_set.host,
                spice_set.tls_port,
                ssl=self.tls.for_guests,
                server_hostname=DISPLAY_CERT_NAME,
            )
        return await asyncio.open_connection(spice_set.host, spice_set.port)

    async def _client_tls(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Be the TLS server of the tunnel (remote-viewer checks the certificate): streams
        of their own over the TLS transport (StreamWriter.start_tls would leave the old
        reader's flow control on the raw socket, under the TLS layer)."""
        if self.tls is None:
            raise ssl.SSLError("the file wants TLS, and this proxy has no certificate")
        # Bytes read before TLS would be taken as SPICE after it: nothing may precede it.
        if reader._buffer:  # type: ignore[attr-defined]
            raise SpiceLinkError("the client spoke before TLS")
        loop = asyncio.get_running_loop()
        tls_reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(tls_reader, loop=loop)
        transport = await loop.start_tls(
            writer.transport, protocol, self.tls.for_clients, server_side=True
        )
        assert transport is not None
        protocol.connection_made(transport)
        return tls_reader, asyncio.StreamWriter(transport, protocol, tls_reader, loop)

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
        if result == LINK_OK:
            log.info(
                "SPICE proxy: session %s: channel %s linked; remote-viewer over %s, QEMU over %s",
                spice_set.session_id,
                mess.channel_type,
                _tls_of(writer),
                _tls_of(guest.writer),
            )
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
                async with self.threads.on(live.spice_set.desktop_id):
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

    # Over TLS, one SPICE message per write (so per TLS record): see MessageCutter.
    to_client = _cutter(spice_set.client_tls, mini_header=guest.mini_header)
    to_qemu = _cutter(spice_set.guest_tls, mini_header=guest.mini_header)
    if first:
        to_guest(first)
        _write(guest.writer, to_qemu(first))
    if leftover := guest.take_leftover():
        from_guest(leftover)
        _write(writer, to_client(leftover))
    tasks = [
        asyncio.create_task(_pipe(reader, guest.writer, to_guest, to_qemu)),
        asyncio.create_task(_pipe(guest.reader, writer, from_guest, to_client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _cutter(tls: bool, *, mini_header: bool) -> Callable[[bytes], list[bytes]]:
    """How bytes for a leg are cut into writes: at SPICE message ends over TLS, else not."""
    if tls:
        return MessageCutter(mini_header=mini_header).feed
    return lambda data: [data]


def _write(sink: asyncio.StreamWriter, pieces: list[bytes]) -> None:
    for piece in pieces:
        sink.write(piece)


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    seen: Callable[[bytes], None],
    cut: Callable[[bytes], list[bytes]],
) -> None:
    try:
        while data := await source.read(CHUNK):
            seen(data)
            _write(sink, cut(data))
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


def _tls_of(writer: asyncio.StreamWriter | None) -> str:
    """A connection's TLS version, or "plain SPICE"."""
    tls = writer.get_extra_info("ssl_object") if writer is not None else None
    return str(tls.version()) if tls is not None else "plain SPICE"


def _peer_ip(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else None


async def serve(*, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then close every set and return."""
    tls_dir = settings.SPICE_TLS_DIR
    proxy = SpiceProxy(
        max_connections=settings.SPICE_PROXY_MAX_CONNECTIONS,
        max_per_user=settings.SPICE_PROXY_MAX_CONNECTIONS_PER_USER,
        handshake_timeout_s=settings.CONSOLE_HANDSHAKE_TIMEOUT_S,
        recheck_s=float(settings.CONSOLE_RECHECK_S),
        tls=proxy_tls(Path(tls_dir)) if tls_dir else None,
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
