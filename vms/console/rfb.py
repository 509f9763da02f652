"""Sans-IO pieces of the RFB (VNC) protocol for the console relay.

The relay sits between noVNC in the browser (RFB over a WebSocket) and QEMU's built-in VNC
server (RFB over TCP). Nothing here touches a socket or an event loop: every class is a
state machine that is fed the bytes received and returns the bytes to send, so that the
asyncio Channels consumer and the synchronous websockify gateway share one implementation.

* :class:`UpstreamHandshake` - the relay as a VNC *client* of QEMU. It answers QEMU's VNC
  Authentication itself, so the per-session password never reaches the browser, and it always
  asks for a *shared* session so that several viewers can watch one desktop.
* :class:`DownstreamHandshake` - the relay as a VNC *server* for the browser. It offers only
  security type 1 (None): the browser was already authenticated by its console ticket.
* :class:`ClientMessageFilter` - parses the browser-to-QEMU stream after the handshakes,
  forwards whole messages only, bounds what it buffers and, in view-only mode, drops every
  input or state-changing message (docs/architecture.md, section 4: view-only is enforced
  in the relay).

The server-to-client stream is passed through unparsed. Reference: the community RFB
specification (rfbproto) and noVNC 1.7.0's ``core/rfb.js``.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

from vms.console.vncauth import CHALLENGE_LENGTH, vnc_auth_response

__all__ = [
    "ClientMessageFilter",
    "ClientMessageType",
    "DownstreamHandshake",
    "RfbProtocolError",
    "ServerInit",
    "UpstreamHandshake",
]

RFB_3_3 = (3, 3)
RFB_3_7 = (3, 7)
RFB_3_8 = (3, 8)

SECURITY_INVALID = 0
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2

SECURITY_RESULT_OK = 0

MAX_REASON_LENGTH = 4096
"""Longest failure reason accepted from a server; longer ones are treated as malformed."""

MAX_DESKTOP_NAME_LENGTH = 4096
"""Longest desktop name accepted in ServerInit."""

MAX_EARLY_CLIENT_BYTES = 64 * 1024
"""How much the browser may send after ClientInit before the relay has a ServerInit to give."""

SERVER_INIT_HEADER_LENGTH = 24
"""ServerInit without the name: width, height, 16-byte pixel format, name length."""

MAX_ENCODINGS = 1024
"""Most encodings accepted in one SetEncodings message (noVNC sends about 30)."""

MAX_FENCE_PAYLOAD = 64
"""The Fence extension limits the payload to 64 bytes."""

ENCODING_EXTENDED_MOUSE_BUTTONS = -316
"""Pseudo-encoding that lets PointerEvent grow to 7 bytes once the *server* acknowledges it."""

ENCODING_EXTENDED_CLIPBOARD = struct.unpack(">i", bytes.fromhex("c0a1e5ce"))[0]
"""Pseudo-encoding (0xC0A1E5CE) that allows ClientCutText with a negative length."""

STRIPPED_ENCODINGS = frozenset({ENCODING_EXTENDED_MOUSE_BUTTONS})
"""Encodings the filter removes from SetEncodings before QEMU sees them.

ExtendedMouseButtons changes the length of PointerEvent depending on whether the server
acknowledged it, which the client-side filter cannot see. Stripping it keeps the framing of
the filter and of QEMU identical (PointerEvent is always 6 bytes); the only loss is mouse
buttons 8 and up (back/forward), which QEMU 7.2 does not support anyway.
"""

_VERSION_RE = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_S32 = struct.Struct(">i")


class RfbProtocolError(Exception):
    """Malformed, unsupported or oversized RFB input; the relay closes the connection."""


# --------------------------------------------------------------------------------------------
# Helpers shared by the handshakes
# --------------------------------------------------------------------------------------------


class _ByteBuffer:
    """A receive buffer from which complete fields are taken once enough bytes arrived."""

    def __init__(self) -> None:
        self._data = bytearray()

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._data += data

    def peek(self, count: int) -> bytes | None:
        """Return the first ``count`` bytes without removing them, or ``None`` if fewer."""
        if len(self._data) < count:
            return None
        return bytes(self._data[:count])

    def take(self, count: int) -> bytes | None:
        """Remove and return the first ``count`` bytes, or ``None`` if fewer are buffered."""
        if len(self._data) < count:
            return None
        chunk = bytes(self._data[:count])
        del self._data[:count]
        return chunk

    def take_prefixed(self, max_length: int, what: str) -> bytes | None:
        """Remove and return a u32-length-prefixed string (without its prefix).

        Returns ``None`` until the whole string is buffered; raises ``RfbProtocolError`` as
        soon as the announced length exceeds ``max_length``.
        """
        if len(self._data) < _U32.size:
            return None
        (length,) = _U32.unpack_from(self._data)
        if length > max_length:
            raise RfbProtocolError(f"{what} too long ({length} bytes)")
        if len(self._data) < _U32.size + length:
            return None
        del self._data[: _U32.size]
        return self.take(length)

    def take_all(self) -> bytes:
        """Remove and return everything buffered."""
        chunk = bytes(self._data)
        self._data.clear()
        return chunk


def parse_version(raw: bytes) -> tuple[int, int]:
    """Parse a 12-byte ProtocolVersion message such as ``b"RFB 003.008\\n"``."""
    match = _VERSION_RE.fullmatch(raw)
    if match is None:
        raise RfbProtocolError(f"not an RFB protocol version: {raw!r}")
    return int(match.group(1)), int(match.group(2))


def format_version(version: tuple[int, int]) -> bytes:
    """Return the 12-byte ProtocolVersion message for ``(major, minor)``."""
    return b"RFB %03d.%03d\n" % version


def _decode_text(raw: bytes) -> str:
    """Decode a server-supplied string, never failing.

    Trailing NUL bytes are dropped: QEMU counts the C string terminator in its failure
    reason ("Authentication failed\\0").
    """
    return raw.rstrip(b"\0").decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ServerInit:
    """A parsed ServerInit message (the server's framebuffer size, pixel format and name)."""

    width: int
    height: int
    pixel_format: bytes
    name: bytes

    @classmethod
    def parse(cls, data: bytes) -> ServerInit:
        """Parse exactly one complete ServerInit message."""
        if len(data) < SERVER_INIT_HEADER_LENGTH:
            raise RfbProtocolError("ServerInit is too short")
        width, height = struct.unpack_from(">HH", data)
        (name_length,) = _U32.unpack_from(data, 20)
        if name_length > MAX_DESKTOP_NAME_LENGTH:
            raise RfbProtocolError(f"desktop name too long ({name_length} bytes)")
        if len(data) != SERVER_INIT_HEADER_LENGTH + name_length:
            raise RfbProtocolError("ServerInit length does not match its name length")
        return cls(width, height, bytes(data[4:20]), bytes(data[SERVER_INIT_HEADER_LENGTH:]))

    @property
    def desktop_name(self) -> str:
        """The desktop name as text (invalid UTF-8 replaced)."""
        return _decode_text(self.name)

    def to_bytes(self) -> bytes:
        """Serialise back to the wire format."""
        header = struct.pack(">HH16sI", self.width, self.height, self.pixel_format, len(self.name))
        return header + self.name


# --------------------------------------------------------------------------------------------
# Upstream: the relay as a VNC client of QEMU
# --------------------------------------------------------------------------------------------


class _Up(enum.Enum):
    VERSION = enum.auto()
    SECURITY_TYPES = enum.auto()  # 3.7 / 3.8: count + list
    SECURITY_TYPE_33 = enum.auto()  # 3.3: the server decides, u32
    CONNECTION_FAILED = enum.auto()  # reason string after "0 types" / type 0
    CHALLENGE = enum.auto()
    SECURITY_RESULT = enum.auto()
    AUTH_FAILED_REASON = enum.auto()
    SERVER_INIT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


def choose_client_version(server: tuple[int, int]) -> tuple[int, int]:
    """Return the version a client replies with to a server announcing ``server``.

    3.8 and anything newer get 3.8, 3.7 gets 3.7, and 3.3 to 3.6 (3.5 was never published;
    3.4 and 3.6 are vendor variants of 3.3) get 3.3, as the specification recommends.
    """
    if server >= RFB_3_8:
        return RFB_3_8
    if server == RFB_3_7:
        return RFB_3_7
    if RFB_3_3 <= server < RFB_3_7:
        return RFB_3_3
    raise RfbProtocolError(f"unsupported RFB version {server[0]}.{server[1]}")


class UpstreamHandshake:
    """The relay's handshake as a VNC client of QEMU, up to and including ServerInit.

    Feed everything received from QEMU to :meth:`receive` and send what it returns. Prefers
    security type 2 (VNC Authentication, answered with ``password``), accepts 1 (None) if
    that is all the server offers, and always sends ClientInit with shared-flag 1 so that
    other viewers of the same desktop stay connected. When :attr:`done` is true,
    :attr:`server_init` holds the raw ServerInit and :attr:`leftover` whatever QEMU sent
    after it (the start of the normal server-to-client stream).
    """

    def __init__(self, password: str) -> None:
        self._password: str | None = password
        self._buffer = _ByteBuffer()
        self._state = _Up.VERSION
        self._version = RFB_3_8
        self._security_type = SECURITY_INVALID
        self._server_init: bytes | None = None
        self._leftover = b""

    def __repr__(self) -> str:
        # Never show the password.
        return f"<UpstreamHandshake state={self._state.name}>"

    @property
    def done(self) -> bool:
        """True once ServerInit has been received."""
        return self._state is _Up.DONE

    @property
    def version(self) -> tuple[int, int]:
        """The protocol version agreed with the server."""
        return self._version

    @property
    def security_type(self) -> int:
        """The security type chosen (0 until then)."""
        return self._security_type

    @property
    def server_init(self) -> bytes:
        """The complete ServerInit message (24 bytes + name); only once :attr:`done`."""
        if self._server_init is None:
            raise RuntimeError("the upstream handshake is not finished")
        return self._server_init

    @property
    def leftover(self) -> bytes:
        """Bytes received after ServerInit: they belong to the normal server stream."""
        return self._leftover

    def receive(self, data: bytes) -> bytes:
        """Consume bytes from the server; return the bytes to send to it."""
        if self._state is _Up.FAILED:
            raise RfbProtocolError("the upstream handshake already failed")
        if self._state is _Up.DONE:
            raise RfbProtocolError("the upstream handshake is already finished")
        self._buffer.feed(data)
        out = bytearray()
        try:
            while not self.done:
                produced = self._step()
                if produced is None:
                    break
                out += produced
        except RfbProtocolError:
            self._state = _Up.FAILED
            self._password = None
            raise
        if self.done:
            self._leftover = self._buffer.take_all()
        return bytes(out)

    def _step(self) -> bytes | None:
        """Advance one state; return bytes to send (possibly empty) or None to wait."""
        handlers = {
            _Up.VERSION: self._on_version,
            _Up.SECURITY_TYPES: self._on_security_types,
            _Up.SECURITY_TYPE_33: self._on_security_type_33,
            _Up.CONNECTION_FAILED: self._on_connection_failed,
            _Up.CHALLENGE: self._on_challenge,
            _Up.SECURITY_RESULT: self._on_security_result,
            _Up.AUTH_FAILED_REASON: self._on_auth_failed_reason,
            _Up.SERVER_INIT: self._on_server_init,
        }
        return handlers[self._state]()

    def _on_version(self) -> bytes | None:
        raw = self._buffer.take(12)
        if raw is None:
            return None
        self._version = choose_client_version(parse_version(raw))
        self._state = _Up.SECURITY_TYPE_33 if self._version == RFB_3_3 else _Up.SECURITY_TYPES
        return format_version(self._version)

    def _on_security_types(self) -> bytes | None:
        head = self._buffer.peek(1)
        if head is None:
            return None
        if head[0] == 0:
            self._buffer.take(1)
            self._state = _Up.CONNECTION_FAILED
            return b""
        offered = self._buffer.take(1 + head[0])
        if offered is None:
            return None
        return self._choose_security(set(offered[1:]))

    def _choose_security(self, offered: set[int]) -> bytes:
        if SECURITY_VNC_AUTH in offered:
            self._security_type = SECURITY_VNC_AUTH
            self._state = _Up.CHALLENGE
        elif SECURITY_NONE in offered:
            self._security_type = SECURITY_NONE
            self._password = None
            self._state = _Up.SECURITY_RESULT if self._version == RFB_3_8 else _Up.SERVER_INIT
        else:
            raise RfbProtocolError(f"server offers no usable security type: {sorted(offered)}")
        response = _U8.pack(self._security_type)
        if self._state is _Up.SERVER_INIT:
            return response + self._client_init()
        return response

    def _on_security_type_33(self) -> bytes | None:
        raw = self._buffer.take(4)
        if raw is None:
            return None
        (security_type,) = _U32.unpack(raw)
        if security_type == SECURITY_INVALID:
            self._state = _Up.CONNECTION_FAILED
            return b""
        if security_type == SECURITY_VNC_AUTH:
            self._security_type = security_type
            self._state = _Up.CHALLENGE
            return b""
        if security_type == SECURITY_NONE:
            self._security_type = security_type
            self._password = None
            self._state = _Up.SERVER_INIT
            return self._client_init()
        raise RfbProtocolError(f"server requires unsupported security type {security_type}")

    def _on_connection_failed(self) -> bytes | None:
        reason = self._buffer.take_prefixed(MAX_REASON_LENGTH, "failure reason")
        if reason is None:
            return None
        raise RfbProtocolError(f"server refused the connection: {_decode_text(reason)}")

    def _on_challenge(self) -> bytes | None:
        challenge = self._buffer.take(CHALLENGE_LENGTH)
        if challenge is None:
            return None
        password, self._password = self._password, None
        response = vnc_auth_response(password or "", challenge)
        self._state = _Up.SECURITY_RESULT
        return response

    def _on_security_result(self) -> bytes | None:
        raw = self._buffer.take(4)
        if raw is None:
            return None
        (result,) = _U32.unpack(raw)
        if result != SECURITY_RESULT_OK:
            if self._version == RFB_3_8:
                self._state = _Up.AUTH_FAILED_REASON
                return b""
            raise RfbProtocolError(f"VNC authentication failed (result {result})")
        self._state = _Up.SERVER_INIT
        return self._client_init()

    def _on_auth_failed_reason(self) -> bytes | None:
        reason = self._buffer.take_prefixed(MAX_REASON_LENGTH, "failure reason")
        if reason is None:
            return None
        raise RfbProtocolError(f"VNC authentication failed: {_decode_text(reason)}")

    def _on_server_init(self) -> bytes | None:
        header = self._buffer.peek(SERVER_INIT_HEADER_LENGTH)
        if header is None:
            return None
        (name_length,) = _U32.unpack_from(header, 20)
        if name_length > MAX_DESKTOP_NAME_LENGTH:
            raise RfbProtocolError(f"desktop name too long ({name_length} bytes)")
        message = self._buffer.take(SERVER_INIT_HEADER_LENGTH + name_length)
        if message is None:
            return None
        self._server_init = message
        self._state = _Up.DONE
        return b""

    @staticmethod
    def _client_init() -> bytes:
        """ClientInit with shared-flag 1: never ask QEMU to disconnect other viewers."""
        return b"\x01"


# --------------------------------------------------------------------------------------------
# Downstream: the relay as a VNC server for the browser
# --------------------------------------------------------------------------------------------


class _Down(enum.Enum):
    NOT_STARTED = enum.auto()
    VERSION = enum.auto()
    SECURITY_CHOICE = enum.auto()
    CLIENT_INIT = enum.auto()
    AWAIT_SERVER_INIT = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


SUPPORTED_CLIENT_VERSIONS = frozenset({RFB_3_3, RFB_3_7, RFB_3_8})


class DownstreamHandshake:
    """The relay's handshake as a VNC server for the browser, up to ServerInit.

    Send :meth:`start`'s greeting, then feed what the browser sends to :meth:`receive` and
    send what it returns. Only security type 1 (None) is offered. The client's shared flag is
    read and ignored (the upstream session is always shared). Pass QEMU's ServerInit to
    :meth:`server_init` whenever it is available, before or after the browser's ClientInit;
    it is forwarded as soon as ClientInit has arrived. Once :attr:`done`, :attr:`leftover`
    holds the browser's bytes received after ClientInit (for the :class:`ClientMessageFilter`).
    """

    def __init__(self) -> None:
        self._buffer = _ByteBuffer()
        self._state = _Down.NOT_STARTED
        self._version = RFB_3_8
        self._pending_server_init: bytes | None = None
        self._client_shared_flag: int | None = None
        self._leftover = b""

    def __repr__(self) -> str:
        return f"<DownstreamHandshake state={self._state.name}>"

    @property
    def done(self) -> bool:
        """True once ServerInit has been handed to the browser."""
        return self._state is _Down.DONE

    @property
    def version(self) -> tuple[int, int]:
        """The protocol version the browser chose."""
        return self._version

    @property
    def client_shared_flag(self) -> int | None:
        """The shared flag the browser sent (informational; it is ignored)."""
        return self._client_shared_flag

    @property
    def leftover(self) -> bytes:
        """Bytes from the browser after ClientInit; valid once :attr:`done`."""
        return self._leftover

    def start(self) -> bytes:
        """Return the server greeting (ProtocolVersion 3.8)."""
        if self._state is not _Down.NOT_STARTED:
            raise RfbProtocolError("the downstream handshake was already started")
        self._state = _Down.VERSION
        return format_version(RFB_3_8)

    def receive(self, data: bytes) -> bytes:
        """Consume bytes from the browser; return the bytes to send to it."""
        if self._state is _Down.NOT_STARTED:
            raise RfbProtocolError("start() must be called before receive()")
        if self._state is _Down.FAILED:
            raise RfbProtocolError("the downstream handshake already failed")
        if self._state is _Down.DONE:
            raise RfbProtocolError("the downstream handshake is already finished")
        self._buffer.feed(data)
        try:
            out = self._advance()
            waiting = self._state is _Down.AWAIT_SERVER_INIT
            if waiting and len(self._buffer) > MAX_EARLY_CLIENT_BYTES:
                raise RfbProtocolError("client sent too much before the session was ready")
        except RfbProtocolError:
            self._state = _Down.FAILED
            raise
        return out

    def server_init(self, data: bytes) -> bytes:
        """Accept QEMU's ServerInit; return the bytes to send to the browser now.

        Returns the ServerInit itself if the browser's ClientInit has arrived, otherwise
        ``b""`` (it is then returned by the :meth:`receive` call that reads ClientInit).
        """
        if self._state is _Down.FAILED:
            raise RfbProtocolError("the downstream handshake already failed")
        if self._pending_server_init is not None or self._state is _Down.DONE:
            raise RfbProtocolError("ServerInit was already given")
        ServerInit.parse(data)
        self._pending_server_init = bytes(data)
        if self._state is _Down.AWAIT_SERVER_INIT:
            return self._finish()
        return b""

    def _advance(self) -> bytes:
        out = bytearray()
        while True:
            if self._state is _Down.VERSION:
                produced = self._on_version()
            elif self._state is _Down.SECURITY_CHOICE:
                produced = self._on_security_choice()
            elif self._state is _Down.CLIENT_INIT:
                produced = self._on_client_init()
            else:
                return bytes(out)
            if produced is None:
                return bytes(out)
            out += produced

    def _on_version(self) -> bytes | None:
        raw = self._buffer.take(12)
        if raw is None:
            return None
        version = parse_version(raw)
        if version not in SUPPORTED_CLIENT_VERSIONS:
            raise RfbProtocolError(f"unsupported client RFB version {version[0]}.{version[1]}")
        self._version = version
        if version == RFB_3_3:
            # 3.3: the server decides the security type and sends it as a u32.
            self._state = _Down.CLIENT_INIT
            return _U32.pack(SECURITY_NONE)
        self._state = _Down.SECURITY_CHOICE
        return bytes([1, SECURITY_NONE])

    def _on_security_choice(self) -> bytes | None:
        raw = self._buffer.take(1)
        if raw is None:
            return None
        if raw[0] != SECURITY_NONE:
            raise RfbProtocolError(f"client chose security type {raw[0]}, only 1 is offered")
        self._state = _Down.CLIENT_INIT
        # 3.8 sends SecurityResult even for None; 3.7 does not.
        return _U32.pack(SECURITY_RESULT_OK) if self._version == RFB_3_8 else b""

    def _on_client_init(self) -> bytes | None:
        raw = self._buffer.take(1)
        if raw is None:
            return None
        self._client_shared_flag = raw[0]
        self._state = _Down.AWAIT_SERVER_INIT
        if self._pending_server_init is not None:
            return self._finish()
        return b""

    def _finish(self) -> bytes:
        server_init = self._pending_server_init or b""
        self._state = _Down.DONE
        self._leftover = self._buffer.take_all()
        return server_init


# --------------------------------------------------------------------------------------------
# Client-to-server message filter
# --------------------------------------------------------------------------------------------


class ClientMessageType(enum.StrEnum):
    """The client-to-server messages the relay understands (all that noVNC 1.7.0 sends)."""

    SET_PIXEL_FORMAT = "SetPixelFormat"  # type 0, 20 bytes
    SET_ENCODINGS = "SetEncodings"  # type 2, 4 + 4n bytes
    FRAMEBUFFER_UPDATE_REQUEST = "FramebufferUpdateRequest"  # type 3, 10 bytes
    KEY_EVENT = "KeyEvent"  # type 4, 8 bytes
    POINTER_EVENT = "PointerEvent"  # type 5, 6 bytes
    CLIENT_CUT_TEXT = "ClientCutText"  # type 6, 8 + |length| bytes
    ENABLE_CONTINUOUS_UPDATES = "EnableContinuousUpdates"  # type 150, 10 bytes
    CLIENT_FENCE = "ClientFence"  # type 248, 9 + n bytes (n <= 64)
    XVP = "Xvp"  # type 250, 4 bytes
    SET_DESKTOP_SIZE = "SetDesktopSize"  # type 251, 8 + 16n bytes
    QEMU_EXTENDED_KEY_EVENT = "QemuExtendedKeyEvent"  # type 255 sub 0, 12 bytes
    QEMU_AUDIO = "QemuAudio"  # type 255 sub 1, 4 bytes (10 for set-format)


VIEW_ONLY_FORWARDED = frozenset(
    {
        ClientMessageType.SET_PIXEL_FORMAT,
        ClientMessageType.SET_ENCODINGS,
        ClientMessageType.FRAMEBUFFER_UPDATE_REQUEST,
        ClientMessageType.ENABLE_CONTINUOUS_UPDATES,
        ClientMessageType.CLIENT_FENCE,
    }
)
"""The only messages forwarded in view-only mode (an allow-list: all others are dropped)."""

_FIXED_LENGTHS = {
    0: (ClientMessageType.SET_PIXEL_FORMAT, 20),
    3: (ClientMessageType.FRAMEBUFFER_UPDATE_REQUEST, 10),
    4: (ClientMessageType.KEY_EVENT, 8),
    5: (ClientMessageType.POINTER_EVENT, 6),
    150: (ClientMessageType.ENABLE_CONTINUOUS_UPDATES, 10),
    250: (ClientMessageType.XVP, 4),
}

_QEMU_AUDIO_ENABLE = 0
_QEMU_AUDIO_DISABLE = 1
_QEMU_AUDIO_SET_FORMAT = 2

_MAX_HEADER = 9
"""The most bytes needed to know a message's length (ClientFence: 8 + payload length)."""

_Frame = tuple[ClientMessageType, int]
"""A message's type and total length in bytes."""


class ClientMessageFilter:
    """Frame, check and filter the browser's RFB messages after the handshake.

    :meth:`feed` returns only whole messages, in order, and keeps an incomplete trailing
    message buffered; the buffer never exceeds :attr:`max_message_size`, because each
    message's length is checked as soon as its header has arrived. Unknown message types
    and impossible or oversized lengths raise :class:`RfbProtocolError` (after which the
    filter refuses further input). In view-only mode only :data:`VIEW_ONLY_FORWARDED`
    messages pass; everything else is dropped and counted.
    """

    def __init__(
        self, view_only: bool, max_cut_text: int = 1 << 20, *, max_encodings: int = MAX_ENCODINGS
    ) -> None:
        if max_cut_text < 0 or max_encodings < 0:
            raise ValueError("limits must not be negative")
        self.view_only = view_only
        self.max_cut_text = max_cut_text
        self.max_encodings = max_encodings
        self.forwarded_messages = 0
        self.dropped_messages = 0
        self.forwarded_bytes = 0
        self.dropped_by_type: dict[str, int] = {}
        self.forwarded_by_type: dict[str, int] = {}
        self._client_encodings: frozenset[int] = frozenset()
        self._buffer = bytearray()
        self._failed = False

    def __repr__(self) -> str:
        return (
            f"<ClientMessageFilter view_only={self.view_only} "
            f"forwarded={self.forwarded_messages} dropped={self.dropped_messages}>"
        )

    @property
    def buffered(self) -> int:
        """Number of bytes of an incomplete message held back."""
        return len(self._buffer)

    @property
    def max_message_size(self) -> int:
        """The longest message accepted, hence an upper bound on :attr:`buffered`."""
        return max(
            20,
            4 + 4 * self.max_encodings,
            8 + self.max_cut_text,
            9 + MAX_FENCE_PAYLOAD,
            8 + 16 * 255,
            12,
        )

    def feed(self, data: bytes) -> bytes:
        """Consume bytes from the browser; return the bytes to forward to QEMU."""
        if self._failed:
            raise RfbProtocolError("the client stream was already rejected")
        self._buffer += data
        out = bytearray()
        forwarded: list[ClientMessageType] = []
        dropped: list[ClientMessageType] = []
        offset = 0
        try:
            while (frame := self._frame(offset)) is not None:
                kind, length = frame
                message = bytes(self._buffer[offset : offset + length])
                offset += length
                if self.view_only and kind not in VIEW_ONLY_FORWARDED:
                    dropped.append(kind)
                    continue
                out += self._rewrite(kind, message)
                forwarded.append(kind)
        except RfbProtocolError:
            self._failed = True
            self._buffer.clear()
            raise
        del self._buffer[:offset]
        self._count(forwarded, dropped, len(out))
        return bytes(out)

    def _count(
        self, forwarded: list[ClientMessageType], dropped: list[ClientMessageType], size: int
    ) -> None:
        self.forwarded_messages += len(forwarded)
        self.dropped_messages += len(dropped)
        self.forwarded_bytes += size
        for kind in forwarded:
            self.forwarded_by_type[kind.value] = self.forwarded_by_type.get(kind.value, 0) + 1
        for kind in dropped:
            self.dropped_by_type[kind.value] = self.dropped_by_type.get(kind.value, 0) + 1

    # -- framing -------------------------------------------------------------------------

    def _frame(self, offset: int) -> _Frame | None:
        """Return the type and total length of the buffered message starting at ``offset``.

        Returns ``None`` if more bytes are needed to know or to hold the whole message.
        Every length is decided from at most the first :data:`_MAX_HEADER` bytes.
        """
        available = len(self._buffer) - offset
        if available <= 0:
            return None
        data = bytes(self._buffer[offset : offset + _MAX_HEADER])
        message_type = data[0]
        frame: _Frame | None
        if message_type in _FIXED_LENGTHS:
            frame = _FIXED_LENGTHS[message_type]
            if message_type == 0 and len(data) >= 5:
                _check_pixel_format(data)
        elif message_type == 2:
            frame = self._frame_set_encodings(data)
        elif message_type == 6:
            frame = self._frame_cut_text(data)
        elif message_type == 248:
            frame = _frame_fence(data)
        elif message_type == 251:
            frame = _frame_set_desktop_size(data)
        elif message_type == 255:
            frame = _frame_qemu(data)
        else:
            raise RfbProtocolError(f"unknown client message type {message_type}")
        if frame is None or available < frame[1]:
            return None
        return frame

    def _frame_set_encodings(self, data: bytes) -> _Frame | None:
        if len(data) < 4:
            return None
        (count,) = _U16.unpack_from(data, 2)
        if count > self.max_encodings:
            raise RfbProtocolError(f"SetEncodings with {count} encodings")
        return ClientMessageType.SET_ENCODINGS, 4 + 4 * count

    def _frame_cut_text(self, data: bytes) -> _Frame | None:
        if len(data) < 8:
            return None
        (length,) = _S32.unpack_from(data, 4)
        if length < 0:
            # Extended clipboard: the payload is |length| bytes (4 bytes of flags first);
            # only valid once the client advertised the pseudo-encoding.
            if ENCODING_EXTENDED_CLIPBOARD not in self._client_encodings:
                raise RfbProtocolError("extended ClientCutText without the extension")
            length = -length
            if length < 4:
                raise RfbProtocolError("extended ClientCutText shorter than its flags")
        if length > self.max_cut_text:
            raise RfbProtocolError(f"ClientCutText of {length} bytes exceeds the limit")
        return ClientMessageType.CLIENT_CUT_TEXT, 8 + length

    # -- rewriting -----------------------------------------------------------------------

    def _rewrite(self, kind: ClientMessageType, message: bytes) -> bytes:
        """Return the bytes to forward for one whole, accepted message."""
        if kind is not ClientMessageType.SET_ENCODINGS:
            return message
        count = _U16.unpack_from(message, 2)[0]
        encodings = struct.unpack_from(f">{count}i", message, 4)
        self._client_encodings = frozenset(encodings)
        kept = [encoding for encoding in encodings if encoding not in STRIPPED_ENCODINGS]
        if len(kept) == count:
            return message
        return struct.pack(f">BxH{len(kept)}i", 2, len(kept), *kept)


def _check_pixel_format(data: bytes) -> None:
    """Reject a SetPixelFormat whose bits-per-pixel QEMU would not accept."""
    bits_per_pixel = data[4]
    if bits_per_pixel not in (8, 16, 32):
        raise RfbProtocolError(f"SetPixelFormat with {bits_per_pixel} bits per pixel")


def _frame_fence(data: bytes) -> _Frame | None:
    if len(data) < 9:
        return None
    payload = data[8]
    if payload > MAX_FENCE_PAYLOAD:
        raise RfbProtocolError(f"ClientFence with a {payload}-byte payload")
    return ClientMessageType.CLIENT_FENCE, 9 + payload


def _frame_set_desktop_size(data: bytes) -> _Frame | None:
    if len(data) < 7:
        return None
    screens = data[6]
    return ClientMessageType.SET_DESKTOP_SIZE, 8 + 16 * screens


def _frame_qemu(data: bytes) -> _Frame | None:
    if len(data) < 2:
        return None
    subtype = data[1]
    if subtype == 0:
        return ClientMessageType.QEMU_EXTENDED_KEY_EVENT, 12
    if subtype != 1:
        raise RfbProtocolError(f"unknown QEMU client message sub-type {subtype}")
    if len(data) < 4:
        return None
    (operation,) = _U16.unpack_from(data, 2)
    if operation in (_QEMU_AUDIO_ENABLE, _QEMU_AUDIO_DISABLE):
        return ClientMessageType.QEMU_AUDIO, 4
    if operation == _QEMU_AUDIO_SET_FORMAT:
        return ClientMessageType.QEMU_AUDIO, 10
    raise RfbProtocolError(f"unknown QEMU audio operation {operation}")
