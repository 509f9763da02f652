"""SPICE channel messages after the link, sans-IO: framing, the view-only filter of the
main channel, and the session id in the main channel's SPICE_MSG_MAIN_INIT.

A message is a header and a body. With the MINI_HEADER capability (both ends have it;
spice-html5 and QEMU do) the header is type u16 and size u32; without it, serial u64,
type u16, size u32 and sub_list u32. Little-endian throughout.
"""

from __future__ import annotations

import struct

from vms.console.spicelink import CHANNEL_DISPLAY, CHANNEL_INPUTS, CHANNEL_MAIN

MINI_HEADER = struct.Struct("<HI")
FULL_HEADER = struct.Struct("<QHII")
MAX_MESSAGE_BYTES = 1 << 20
MSG_MAIN_INIT = 103
MAX_BYTES_BEFORE_INIT = 64 * 1024

# What a view-only browser may still say on the main channel: acknowledgements, pongs,
# going away, and asking for the channel list. Agent messages (clipboard, file transfer,
# monitor layout) and mouse-mode requests are dropped.
MSGC_ACK_SYNC = 1
MSGC_ACK = 2
MSGC_PONG = 3
MSGC_DISCONNECTING = 6
MSGC_MAIN_ATTACH_CHANNELS = 104
VIEW_ONLY_MAIN_MESSAGES = frozenset(
    {MSGC_ACK_SYNC, MSGC_ACK, MSGC_PONG, MSGC_DISCONNECTING, MSGC_MAIN_ATTACH_CHANNELS}
)


class SpiceMessageError(Exception):
    """A peer sent something that is not a SPICE message stream."""


class MessageFramer:
    """Bytes in, whole messages (type, header and body bytes) out."""

    def __init__(self, *, mini_header: bool) -> None:
        self.header = MINI_HEADER if mini_header else FULL_HEADER
        self._type_at = 0 if mini_header else 8
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        messages = []
        while len(self.buffer) >= self.header.size:
            fields = self.header.unpack_from(self.buffer)
            kind, size = (fields[0], fields[1]) if len(fields) == 2 else (fields[1], fields[2])
            if size > MAX_MESSAGE_BYTES:
                raise SpiceMessageError(f"a SPICE message of {size} bytes")
            end = self.header.size + size
            if len(self.buffer) < end:
                break
            messages.append((int(kind), bytes(self.buffer[:end])))
            del self.buffer[:end]
        return messages


class MessageCutter:
    """Bytes in, the same bytes out in pieces that never span two messages (an incomplete
    header is held back). Over TLS each piece goes in records of its own: spice-gtk reads a
    record's next message only once its socket is readable again, so a record that ends
    inside a second message stalls the channel until the peer sends more, which it will not
    before that message is acknowledged."""

    def __init__(self, *, mini_header: bool) -> None:
        self.header = MINI_HEADER if mini_header else FULL_HEADER
        self._head = bytearray()
        self._left = 0  # body bytes of the current message still to come

    def feed(self, data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        piece = bytearray()
        at = 0
        while at < len(data):
            if self._left == 0:
                need = self.header.size - len(self._head)
                self._head += data[at : at + need]
                at += min(need, len(data) - at)
                if len(self._head) < self.header.size:
                    break
                fields = self.header.unpack(self._head)
                piece, self._left = bytearray(self._head), int(fields[2 if len(fields) == 4 else 1])
                self._head.clear()
            take = min(self._left, len(data) - at)
            piece += data[at : at + take]
            at += take
            self._left -= take
            if self._left == 0 or at == len(data):
                pieces.append(bytes(piece))
                piece = bytearray()
        return pieces


class ViewOnlyMainFilter:
    """Client-to-server bytes of a view-only main channel, with every message dropped that
    could type, paste or move files; `dropped_messages` counts them."""

    def __init__(self, *, mini_header: bool) -> None:
        self._framer = MessageFramer(mini_header=mini_header)
        self.dropped_messages = 0

    def feed(self, data: bytes) -> bytes:
        kept = bytearray()
        for kind, message in self._framer.feed(data):
            if kind in VIEW_ONLY_MAIN_MESSAGES:
                kept += message
            else:
                self.dropped_messages += 1
        return bytes(kept)


class PassThrough:
    """Client-to-server bytes of a channel the mode allows as they are."""

    dropped_messages = 0

    def feed(self, data: bytes) -> bytes:
        return data


MSGC_DISPLAY_INIT = 101
DISPLAY_INIT_BYTES = 14  # pixmap cache id u8, size i64, glz dictionary id u8, window i32


class DisplayFilter:
    """Client-to-server bytes of a display channel, framed: a SPICE_MSGC_DISPLAY_INIT of any
    length but its own closes the channel (a short one crashes QEMU 7.2's SPICE worker)."""

    dropped_messages = 0

    def __init__(self, *, mini_header: bool) -> None:
        self._framer = MessageFramer(mini_header=mini_header)

    def feed(self, data: bytes) -> bytes:
        kept = bytearray()
        for kind, message in self._framer.feed(data):
            size = len(message) - self._framer.header.size
            if kind == MSGC_DISPLAY_INIT and size != DISPLAY_INIT_BYTES:
                raise SpiceMessageError(f"a display init of {size} bytes")
            kept += message
        return bytes(kept)


class DisplayInitGate:
    """A display channel's first client bytes, held until its SPICE_MSGC_DISPLAY_INIT is
    whole: only then does the relay open the channel with QEMU (vms.console.spiceguest)."""

    def __init__(self, *, mini_header: bool) -> None:
        self._framer = MessageFramer(mini_header=mini_header)

    def feed(self, data: bytes) -> bytes | None:
        """Every byte so far once the init is complete (None before); raise if the first
        message is anything else."""
        messages = self._framer.feed(data)
        if not messages:
            if len(self._framer.buffer) > self._framer.header.size + DISPLAY_INIT_BYTES:
                raise SpiceMessageError("a display channel must start with its display init")
            return None
        kind, first = messages[0]
        if kind != MSGC_DISPLAY_INIT or len(first) - self._framer.header.size != (
            DISPLAY_INIT_BYTES
        ):
            raise SpiceMessageError("a display channel must start with its display init")
        rest = b"".join(message for _, message in messages[1:]) + bytes(self._framer.buffer)
        self._framer.buffer.clear()
        return first + rest


# Key presses and releases on the inputs channel (SPICE_MSGC_INPUTS_KEY_*).
KEY_MESSAGES = frozenset({101, 102, 103, 104})


class InputsFilter:
    """Client-to-server bytes of an inputs channel, framed, so that the relay can space
    its key messages out (vms.console.spicerelay.KEY_GAP_S)."""

    dropped_messages = 0

    def __init__(self, *, mini_header: bool) -> None:
        self._framer = MessageFramer(mini_header=mini_header)

    def feed(self, data: bytes) -> bytes:
        return b"".join(message for _, message in self._framer.feed(data))

    def pieces(self, data: bytes) -> list[tuple[bool, bytes]]:
        """The whole messages in `data` as (a key message?, its bytes), in order; the
        others next to each other in one piece."""
        pieces: list[tuple[bool, bytes]] = []
        for kind, message in self._framer.feed(data):
            key = kind in KEY_MESSAGES
            if pieces and not key and not pieces[-1][0]:
                pieces[-1] = (False, pieces[-1][1] + message)
            else:
                pieces.append((key, message))
        return pieces


ClientFilter = PassThrough | ViewOnlyMainFilter | DisplayFilter | InputsFilter


def client_filter_for(*, channel_type: int, view_only: bool, mini_header: bool) -> ClientFilter:
    """How a channel's client-to-server bytes are checked: the main channel of a view-only
    session is filtered, display and inputs channels are framed, the rest passes as it is."""
    if channel_type == CHANNEL_MAIN and view_only:
        return ViewOnlyMainFilter(mini_header=mini_header)
    if channel_type == CHANNEL_DISPLAY:
        return DisplayFilter(mini_header=mini_header)
    if channel_type == CHANNEL_INPUTS:
        return InputsFilter(mini_header=mini_header)
    return PassThrough()


class MainInitWatcher:
    """Reads the server-to-client bytes of a main channel (without changing them) until
    SPICE_MSG_MAIN_INIT gives the SPICE session id, which later channels link with."""

    def __init__(self, *, mini_header: bool) -> None:
        self._framer = MessageFramer(mini_header=mini_header)
        self._seen = 0
        self.session_id: int | None = None

    def feed(self, data: bytes) -> int | None:
        """The session id once it has arrived (None until then)."""
        if self.session_id is not None:
            return self.session_id
        self._seen += len(data)
        for kind, message in self._framer.feed(data):
            if kind == MSG_MAIN_INIT:
                body = message[self._framer.header.size :]
                if len(body) < 4:
                    raise SpiceMessageError("a short SPICE_MSG_MAIN_INIT")
                self.session_id = int(struct.unpack_from("<I", body)[0])
                self._framer.buffer.clear()
                return self.session_id
        if self._seen > MAX_BYTES_BEFORE_INIT:
            raise SpiceMessageError("the main channel sent no SPICE_MSG_MAIN_INIT")
        return None
