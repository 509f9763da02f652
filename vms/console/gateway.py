"""The websockify console gateway: the console relay for deployments that keep the
hypervisors' networks away from the web tier.

It speaks to the browser exactly as the same-origin Channels relay (vms.console.relay)
does: the subprotocol 'binary' is selected and the one-time ticket rides beside it as a
second subprotocol ``ticket.<ticket>`` (never in the URL); the same admission
(`console_admit`: Origin, ticket, the user's rights, a running desktop) runs after the
upgrade, and every refusal or end is a WebSocket close frame with the same codes and
reasons. Then it arms the guest with a one-off VNC password, authenticates to QEMU itself,
offers the browser an RFB session without authentication, and relays bytes both ways;
browser-to-guest bytes pass through the RFB message filter (view-only drops input events).
Every `CONSOLE_RECHECK_S` it checks that the user may still see the desktop and that it
still runs.

websockify's `WebSocketProxy` runs in the main thread of its own process
(``manage.py consoleproxy``) and forks one process per connection: sessions are isolated
from one another, at the cost of one process (mostly pages shared copy-on-write with the
listener) per open console. No token plugin is used: websockify's plugins read the token
from the URL's query string (and log unknown tokens), which is exactly where a ticket must
not go, and the guest's endpoint comes from libvirt for the admitted desktop, never from
the client.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import re
import select
import signal
import socket
import time
import uuid
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import connections
from websockify import websocketproxy, websockifyserver
from websockify.websocket import WebSocketWantReadError, WebSocketWantWriteError

from vms.console.guest import guest_connect_blocking
from vms.console.rfb import ClientMessageFilter, DownstreamHandshake, RfbProtocolError
from vms.console.spicegateway import SpiceChannelRefused, spice_link_blocking
from vms.console.spiceguest import SpiceGuestSocket, spice_guest_close_blocking
from vms.console.spicelink import SpiceLinkError
from vms.console.spicemsg import ClientFilter, MainInitWatcher, SpiceMessageError
from vms.models import ConsoleMode
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
    console_session_keep,
    forwarded_secure,
)
from vms.services.consoles.spice_channels import (
    SpiceAdmission,
    spice_admit,
    spice_channel_tally,
    spice_channels_close,
    spice_channels_open,
)
from vms.web.client import client_address

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_MESSAGE_BYTES = 1 << 20
"""The largest browser message accepted (as Daphne); noVNC's largest is a few KiB."""
CLOSE_TOO_BIG = 1009
MAX_BACKLOG = 1 << 20
"""Bytes queued towards one side before the gateway stops reading from the other."""
PING_INTERVAL_S = 20.0
"""Like Daphne's default, so that idle consoles survive proxies' read timeouts."""
CLOSE_TIMEOUT_S = 2.0
"""How long a close waits for queued bytes and the close frame to leave."""
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
MAX_CLOSE_REASON_BYTES = 123
DEFAULT_LISTEN = "127.0.0.1:6080"
RELAY_NAME = "gateway"

_DESKTOP_PATH = re.compile(r"/ws/(console|spice)/([0-9a-fA-F-]{32,36})/?$")


class GatewayStopping(BaseException):
    """The gateway was told to stop (SIGTERM) while this console was open.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """


class MessageTooBig(Exception):
    """The browser announced or sent a message over MAX_MESSAGE_BYTES."""


class HandshakeTooSlow(Exception):
    """The upgrade did not finish within CONSOLE_HANDSHAKE_TIMEOUT_S."""


class _GatewayWebSocket(websockifyserver.CompatibleWebSocket):  # type: ignore[misc,unused-ignore]
    """websockify's server-side WebSocket, choosing subprotocols through the handler, and
    refusing messages over MAX_MESSAGE_BYTES before it buffers them (websockify itself
    waits for a whole frame of any announced length)."""

    def _decode_hybi(self, buf: bytes) -> dict[str, Any] | None:
        announced = _announced_length(buf)
        pending = len(self._partial_msg) + sum(len(f["payload"]) for f in self._recv_queue)
        if announced is not None and pending + announced > MAX_MESSAGE_BYTES:
            raise MessageTooBig()
        frame: dict[str, Any] | None = super()._decode_hybi(buf)
        return frame

    def select_subprotocol(self, protocols: list[str]) -> str:
        chosen: str = self.request_handler.select_subprotocol(protocols)
        return chosen

    def handle_ping(self, data: bytes) -> None:
        """Answer a ping only between messages (browsers never ping; websockify would
        raise ValueError if a pong cut into a partly sent message)."""
        if getattr(self, "_previous_sendmsg", None) is not None or self._send_buffer:
            return
        try:
            self.pong(data)
        except WebSocketWantWriteError:
            # The rest of the pong stays in the send buffer and leaves before the next
            # message; forget it as "the message to repeat".
            self._previous_sendmsg = None


class LinkedSide:
    """The browser side of a SPICE channel in the relay loop: linked before it began."""

    done = True
    leftover = b""

    def receive(self, data: bytes) -> bytes:
        raise AssertionError("a SPICE channel has no handshake left")  # pragma: no cover


class ConsoleGatewayHandler(websocketproxy.ProxyRequestHandler):  # type: ignore[misc,unused-ignore]
    """One browser's console session, in its own forked process (see the module docstring)."""

    SocketClass = _GatewayWebSocket

    session_id: int | None = None
    client_filter: ClientMessageFilter | ClientFilter | None = None
    browser_side: DownstreamHandshake | LinkedSide = LinkedSide()
    guest_leftover = b""
    to_guest_first = b""
    spice: SpiceAdmission | None = None
    spice_guest: SpiceGuestSocket | None = None
    guest_heard = False
    watcher: MainInitWatcher | None = None
    refused_channels = 0
    link_queue: list[bytes]
    bytes_to_guest = 0
    bytes_from_guest = 0
    close_reason = "closed by the browser"
    _pending_ping: bytes | None = None

    # -- the upgrade -----------------------------------------------------------------------

    def select_subprotocol(self, protocols: list[str]) -> str:
        """Accept 'binary' when offered; the ticket protocol is read later, for admission.

        websockify splits the header on ',' without trimming, and insists that the answer
        is one of the items exactly as offered.
        """
        for offered in protocols:
            if offered.strip() == BINARY_PROTOCOL:
                return offered
        return ""

    def validate_connection(self) -> None:
        """No token plugin: the target is the admitted desktop's display (from libvirt)."""

    def auth_connection(self) -> None:
        """No websockify auth plugin: `console_admit` decides, after the upgrade."""

    def offered_protocols(self) -> list[str]:
        offered: list[str] = []
        for header in self.headers.get_all("Sec-WebSocket-Protocol") or []:
            offered += [item.strip() for item in str(header).split(",") if item.strip()]
        return offered

    def path_desktop_id(self) -> str | None:
        """The desktop's UUID from a path ending in /ws/console/<uuid>/, if it has one."""
        match = _DESKTOP_PATH.search(self.path.split("?", 1)[0])
        if match is None:
            return None
        try:
            return str(uuid.UUID(match.group(2)))
        except ValueError:
            return None

    def path_is_spice(self) -> bool:
        """Whether the path is a SPICE channel's (/ws/spice/<uuid>/)."""
        match = _DESKTOP_PATH.search(self.path.split("?", 1)[0])
        return match is not None and match.group(1) == "spice"

    def knock(self) -> Knock:
        """The gateway cannot see the portal's session cookie: tickets are bound to the
        address they were issued to."""
        return Knock(
            origin=self.headers.get("Origin"),
            host=self.headers.get("Host"),
            secure=forwarded_secure(self.headers.get("X-Forwarded-Proto")),
            protocols=self.offered_protocols(),
            source_ip=self.source_ip(),
            desktop_id=self.path_desktop_id(),
            sees_session=False,
        )

    def source_ip(self) -> str | None:
        """The browser's address: the peer's, or the one a trusted proxy reports."""
        try:
            peer = str(self.client_address[0])
        except (IndexError, TypeError):
            return None
        # Every X-Forwarded-For line, in order, as Django joins them for the API.
        forwarded_for = ",".join(self.headers.get_all("X-Forwarded-For") or [])
        return client_address(remote_addr=peer, forwarded_for=forwarded_for)

    # -- the session -----------------------------------------------------------------------

    def new_websocket_client(self) -> None:
        """Admit the browser, reach the guest and relay until either side ends."""
        signal.setitimer(signal.ITIMER_REAL, 0)  # the upgrade is done in time
        # Never share a database connection across fork(): the child opens its own.
        connections.close_all()
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the listener stops us with SIGTERM
        guest: socket.socket | None = None
        try:
            try:
                if self.path_is_spice():
                    guest = self._open_spice()
                else:
                    guest = self._open_vnc()
                self._relay(guest)
            except ConsoleClosed as closing:
                if isinstance(closing, SpiceChannelRefused):
                    self.refused_channels += 1
                self._close(closing.code, closing.reason)
            except (RfbProtocolError, SpiceLinkError, SpiceMessageError) as exc:
                self._close(CLOSE_PROTOCOL, f"Console protocol error: {exc}")
            except GatewayStopping:
                self._close(CLOSE_GOING_AWAY, "The console gateway is shutting down.")
            except Exception:
                log.exception("console session %s: gateway failure", self.session_id)
                self._close(CLOSE_INTERNAL_ERROR, "The console gateway failed.")
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the bookkeeping finish
            if self.spice_guest is not None:  # QEMU must have served a display channel
                spice_guest_close_blocking(self.spice_guest, heard=self.guest_heard)
            elif guest is not None:
                _close_socket(guest)
            self._record_close()
            connections.close_all()

    def _open_vnc(self) -> socket.socket:
        """Admit, reach the guest's VNC and offer the browser RFB (its handshake goes on in
        the relay loop; the guest's ServerInit follows the browser's ClientInit)."""
        guest, server_init, leftover = self._open()
        self.browser_side = DownstreamHandshake()
        self._to_browser(self.browser_side.start())
        self._to_browser(self.browser_side.server_init(server_init))
        self.guest_leftover = leftover
        return guest

    def _open_spice(self) -> socket.socket:
        """Admit a SPICE channel and link it on both sides (vms.console.spicegateway)."""
        try:
            self.spice = spice_admit(knock=self.knock(), relay=RELAY_NAME)
            self.session_id = self.spice.session.pk
        finally:
            connections.close_all()
        deadline = time.monotonic() + float(settings.CONSOLE_HANDSHAKE_TIMEOUT_S)
        self.link_queue = []
        try:
            linked = spice_link_blocking(
                admission=self.spice,
                receive=lambda: self._browser_message(deadline),
                send=self._to_browser,
            )
        finally:
            connections.close_all()
        self.client_filter = linked.client_filter
        self.watcher = linked.watcher
        self.guest_leftover = linked.guest_leftover
        self.spice_guest = linked.spice
        self.bytes_to_guest += linked.sent_first
        early = b"".join(self.link_queue)
        self.to_guest_first = linked.client_filter.feed(early)
        return linked.guest

    def _browser_message(self, deadline: float) -> bytes:
        """The browser's next message during a link, within the handshake's time."""
        while not self.link_queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleClosed(CLOSE_PROTOCOL, "The SPICE link took too long.")
            if select.select([self.request], [], [], remaining)[0]:
                messages, closed = self._receive_browser()
                self.link_queue += [message for message in messages if message]
                if closed and not self.link_queue:
                    raise ConsoleClosed(1000, "closed by the browser")
        return self.link_queue.pop(0)

    def _open(self) -> tuple[socket.socket, bytes, bytes]:
        try:
            opened = console_admit(knock=self.knock(), relay=RELAY_NAME)
            self.session_id = opened.pk
            self.client_filter = ClientMessageFilter(view_only=opened.mode == ConsoleMode.VIEW)
            try:
                return guest_connect_blocking(opened)
            except (OSError, RfbProtocolError, DisplayUnreachable) as exc:
                log.warning("console session %s: guest display unreachable: %s", opened.pk, exc)
                raise ConsoleClosed(
                    CLOSE_UNREACHABLE, "The desktop's display did not answer."
                ) from exc
        finally:
            # No idle Postgres connection per open console; rechecks reconnect briefly.
            connections.close_all()

    def _relay(self, guest: socket.socket) -> None:
        """The select() loop: like websockify's do_proxy, with the filter (and for VNC the
        rest of the browser's RFB handshake).

        Returns when the browser closes; raises ConsoleClosed for every other end.
        """
        assert self.client_filter is not None
        if self.request.socket is None:  # the browser left during the handshake
            return
        client_filter = self.client_filter
        browser_side = self.browser_side
        guest_leftover = self.guest_leftover
        guest.setblocking(False)
        self.request.setblocking(False)
        if not self.server.unix_listen:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        guest.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        to_guest = bytearray(self.to_guest_first)
        if browser_side.done and guest_leftover:  # SPICE: linked before the loop
            self._from_guest(guest_leftover)
        now = time.monotonic()
        recheck_at = now + float(settings.CONSOLE_RECHECK_S)
        ping_at = now + PING_INTERVAL_S

        while True:
            backlog = self._browser_backlog()
            readable: list[Any] = []
            writable: list[Any] = []
            if len(to_guest) < MAX_BACKLOG:
                readable.append(self.request)
            if browser_side.done and backlog < MAX_BACKLOG:
                readable.append(guest)
            if to_guest:
                writable.append(guest)
            if backlog:
                writable.append(self.request)
            timeout = max(0.0, min(recheck_at, ping_at) - time.monotonic())
            ins, outs, _ = select.select(readable, writable, [], timeout)

            if self.request in outs:
                self._flush_browser()

            if self.request in ins:
                messages, closed = self._receive_browser()
                for message in messages:
                    if not message:
                        continue
                    if browser_side.done:
                        to_guest += client_filter.feed(message)
                        continue
                    self._to_browser(browser_side.receive(message))
                    if browser_side.done:
                        to_guest += client_filter.feed(browser_side.leftover)
                        if guest_leftover:
                            self._from_guest(guest_leftover)
                if closed:
                    self.bytes_to_guest += _send_best_effort(guest, to_guest)
                    return

            if guest in outs and to_guest:
                try:
                    sent = guest.send(to_guest)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise _display_closed() from exc
                self.bytes_to_guest += sent
                del to_guest[:sent]

            if guest in ins:
                try:
                    data = guest.recv(READ_CHUNK)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    raise _display_closed() from exc
                if data == b"":
                    raise _display_closed()
                if data:
                    self._from_guest(data)

            now = time.monotonic()
            if now >= ping_at:
                ping_at = now + PING_INTERVAL_S
                self._ping()
            if now >= recheck_at:
                recheck_at = now + float(settings.CONSOLE_RECHECK_S)
                self._recheck()

    # -- browser I/O (websockify's WebSocket, non-blocking) ----------------------------------

    def _to_browser(self, data: bytes) -> None:
        """Queue one WebSocket message (like the relay: one per guest read) and send."""
        if data:
            self.send_parts.append(data)
            self._flush_browser()

    def _from_guest(self, data: bytes) -> None:
        # A SPICE main channel: its channels may join once QEMU named the SPICE session,
        # before the browser hears the name and opens them.
        if self.watcher is not None and self.watcher.session_id is None:
            spice_session_id = self.watcher.feed(data)
            if spice_session_id is not None and self.spice is not None:
                try:
                    spice_channels_open(
                        session=self.spice.session,
                        knock=self.knock(),
                        spice_session_id=spice_session_id,
                    )
                finally:
                    connections.close_all()
        self.guest_heard = True
        self.bytes_from_guest += len(data)
        self._to_browser(data)

    def _browser_backlog(self) -> int:
        return sum(len(part) for part in self.send_parts) + len(self._pending_ping or b"")

    def _flush_browser(self) -> None:
        if self._pending_ping is not None:
            try:
                self.request.ping(self._pending_ping)  # websockify: repeat to flush
            except WebSocketWantWriteError:
                return  # the queued messages wait behind the ping
            self._pending_ping = None
        self.send_frames()

    def _ping(self) -> None:
        if self._browser_backlog():
            return  # data is flowing; a ping could not be sent in between anyway
        data = b"gw"
        try:
            self.request.ping(data)
        except WebSocketWantWriteError:
            self._pending_ping = data

    def _receive_browser(self) -> tuple[list[bytes], bool]:
        """Whole binary messages from the browser, and whether it has closed."""
        try:
            messages, closed = self.recv_frames()
        except (WebSocketWantReadError, WebSocketWantWriteError):
            return [], False
        except MessageTooBig:
            log.warning("console session %s: browser message over 1 MiB", self.session_id)
            raise ConsoleClosed(CLOSE_TOO_BIG, "Message too big.") from None
        except OSError:
            return [], True  # the connection dropped: the browser is gone
        return messages, bool(closed)

    def _close(self, code: int, reason: str) -> None:
        """Send what is queued, then a close frame with `code` and `reason`."""
        self.close_reason = reason
        if self.request.socket is None:
            return  # the connection is already closed
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        short = reason.encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
        try:
            while self._browser_backlog() and self._wait_writable(deadline):
                self._flush_browser()
            first = True
            while first or self._wait_writable(deadline):
                first = False
                try:
                    self.send_close(code, short)  # again after WantWrite: flushes it
                    return
                except WebSocketWantWriteError:
                    continue
        except OSError:
            pass  # the browser is already gone

    def _wait_writable(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.request.socket is None:
            return False
        return bool(select.select([], [self.request], [], remaining)[1])

    # -- access and bookkeeping --------------------------------------------------------------

    def _recheck(self) -> None:
        """Close when the user may no longer see the desktop or it stopped running."""
        assert self.session_id is not None
        try:
            closing = console_session_keep(session_id=self.session_id, relay=RELAY_NAME)
        except Exception:
            log.exception("console session %s: access re-check failed", self.session_id)
            return
        finally:
            connections.close_all()
        if closing is not None:
            raise closing

    def _record_close(self) -> None:
        if self.session_id is None:
            return
        dropped = self.refused_channels
        dropped += self.client_filter.dropped_messages if self.client_filter else 0
        try:
            if self.spice is not None and not self.spice.main:
                spice_channel_tally(
                    session_id=self.session_id,
                    bytes_to_guest=self.bytes_to_guest,
                    bytes_from_guest=self.bytes_from_guest,
                    dropped_messages=dropped,
                )
                return
            to, back, more = (0, 0, 0)
            if self.spice is not None:
                to, back, more = spice_channels_close(
                    knock=self.knock(), session_id=self.session_id
                )
            console_session_close(
                session_id=self.session_id,
                reason=self.close_reason,
                bytes_to_guest=self.bytes_to_guest + to,
                bytes_from_guest=self.bytes_from_guest + back,
                dropped_messages=dropped + more,
            )
        except Exception:
            log.exception("console session %s: could not record its end", self.session_id)
        log.info(
            "console session %s closed: %s (%d bytes to guest, %d from guest)",
            self.session_id,
            self.close_reason,
            self.bytes_to_guest,
            self.bytes_from_guest,
        )


class ConsoleGateway(websocketproxy.WebSocketProxy):  # type: ignore[misc,unused-ignore]
    """websockify's forking WebSocket server, serving only console upgrades."""

    def __init__(self, *, listen_host: str, listen_port: int) -> None:
        super().__init__(
            RequestHandlerClass=ConsoleGatewayHandler,
            listen_host=listen_host,
            listen_port=listen_port,
            source_is_ipv6=":" in listen_host,
            verbose=False,  # no request lines or per-connection chatter in the logs
            traffic=False,
            record="",
            web="",  # no file serving: plain GETs get 405
            daemon=False,
            run_once=False,
        )
        # Plain ws:// only, behind the TLS-terminating proxy. websockify would otherwise try
        # TLS with `cert` (by default the working directory) for a TLS ClientHello, and its
        # TLS would not survive the gateway's non-blocking sockets anyway.
        self.cert = ""

    def started(self) -> None:
        self.msg("console gateway listening on %s:%s", self.listen_host, self.listen_port)

    def poll(self) -> None:
        # Runs in the listener before each accept(): the child forked for the next
        # connection inherits how many consoles were open when it came.
        multiprocessing.active_children()  # reap the children that have ended
        self.open_connections = _child_count()

    def top_new_client(self, startsock: socket.socket, address: Any) -> None:
        """In the forked child: refuse over the cap, and bound the upgrade's duration
        (websockify reads the HTTP request with no time limit)."""
        if getattr(self, "open_connections", 0) >= settings.CONSOLE_GATEWAY_MAX_CONNECTIONS:
            log.warning("console gateway at its cap of %s connections", self.open_connections)
            _refuse_busy(startsock)
            return
        startsock.settimeout(float(settings.CONSOLE_HANDSHAKE_TIMEOUT_S))
        signal.signal(signal.SIGALRM, _handshake_too_slow)
        signal.setitimer(signal.ITIMER_REAL, float(settings.CONSOLE_HANDSHAKE_TIMEOUT_S))
        try:
            super().top_new_client(startsock, address)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def msg(self, *args: Any, **kwargs: Any) -> None:
        # websockify's settings summary reports TLS when its `cert` path exists, and its
        # default '' means the working directory; the gateway never serves TLS.
        if args and isinstance(args[0], str) and "SSL/TLS" in args[0]:
            args = ("  - plain ws:// only (TLS ends at the proxy in front)",)
        super().msg(*args, **kwargs)


def parse_listen(value: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'port' (then on 127.0.0.1) -> (host, port)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value.strip()
    host = host.strip("[]")
    if not host:
        raise ValueError(f"no host in {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"not a host:port: {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {value!r}")
    return host, port


def run_gateway(*, listen_host: str, listen_port: int) -> None:
    """Serve consoles in the foreground until SIGINT or SIGTERM (main thread only).

    Raises OSError when it cannot listen.
    """
    # websockify hands each connection to multiprocessing.Process and relies on fork()
    # (the handler inherits the accepted socket); Python 3.14 changes the default.
    multiprocessing.set_start_method("fork", force=True)
    # The children must not inherit an open database connection from the listener.
    connections.close_all()
    # Keep the listener's objects out of the collector's reach, so that collections in the
    # children do not copy the shared pages (less private memory per console).
    gc.collect()
    gc.freeze()
    _check_can_listen(listen_host, listen_port)
    ConsoleGateway(listen_host=listen_host, listen_port=listen_port).start_server()


def _check_can_listen(host: str, port: int) -> None:
    """Fail loudly: websockify logs a bind failure and calls sys.exit() with status 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise GatewayStopping()


def _child_count() -> int:
    """How many child processes the listener has, as the kernel sees them
    (multiprocessing's own list can keep a child another waitpid() already reaped)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as file:
            return len(file.read().split())
    except OSError:
        return len(multiprocessing.active_children())


def _handshake_too_slow(signum: int, frame: FrameType | None) -> None:
    raise HandshakeTooSlow("the WebSocket upgrade took too long")


def _refuse_busy(sock: socket.socket) -> None:
    try:
        sock.settimeout(CLOSE_TIMEOUT_S)
        sock.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n"
        )
    except OSError:
        return


def _announced_length(buf: bytes) -> int | None:
    """The payload length a WebSocket frame header announces, once enough has arrived."""
    if len(buf) < 2:
        return None
    length = buf[1] & 0x7F
    if length == 126:
        return int.from_bytes(buf[2:4], "big") if len(buf) >= 4 else None
    if length == 127:
        return int.from_bytes(buf[2:10], "big") if len(buf) >= 10 else None
    return length


def _display_closed() -> ConsoleClosed:
    return ConsoleClosed(CLOSE_STOPPED, "The desktop's display closed the connection.")


def _send_best_effort(sock: socket.socket, data: bytearray) -> int:
    """Pass on what the browser sent before it closed, without waiting long."""
    if not data:
        return 0
    try:
        sock.settimeout(CLOSE_TIMEOUT_S)
        sock.sendall(data)
    except OSError:
        return 0
    return len(data)


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
