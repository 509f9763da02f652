"""The SPICE link handshake, sans-IO, for a relay that terminates it on both sides.

Layout (spice-protocol `spice/protocol.h`, all integers little-endian):

    SpiceLinkHeader  magic "REDQ", major 2, minor 2, size (of what follows)   16 bytes
    SpiceLinkMess    connection_id u32, channel_type u8, channel_id u8,
                     num_common_caps u32, num_channel_caps u32, caps_offset u32, caps
    SpiceLinkReply   error u32, pub_key[162] (RSA-1024 SubjectPublicKeyInfo, DER),
                     num_common_caps u32, num_channel_caps u32, caps_offset u32, caps
    then the client: [auth_mechanism u32, when both sides have AUTH_SELECTION]
                     ticket: 128 bytes, RSA-OAEP (SHA-1) of the password and a NUL
    then the server: link result u32 (0 = OK)

The relay forwards the browser's SpiceLinkMess to QEMU unchanged and gives the browser
QEMU's SpiceLinkReply with only the public key replaced by its own, so both ends agree on
the same capabilities (mini header, auth selection) and the bytes after the link flow
unchanged. QEMU gets the real one-off password, encrypted with QEMU's key; the browser's
ticket is read and thrown away (the relay admitted the browser before the link began).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MAGIC = b"REDQ"
VERSION_MAJOR = 2
VERSION_MINOR = 2
HEADER = struct.Struct("<4sIII")
MESS = struct.Struct("<IBBIII")
PUBKEY_BYTES = 162
REPLY = struct.Struct(f"<I{PUBKEY_BYTES}sIII")
TICKET_BYTES = 128
U32 = struct.Struct("<I")
MAX_LINK_BYTES = 4096  # a link message carries a handful of capability words

# Common capabilities (bits of the first common-caps word).
CAP_AUTH_SELECTION = 0
CAP_AUTH_SPICE = 1
CAP_AUTH_SASL = 2
CAP_MINI_HEADER = 3
AUTH_MECHANISM_SPICE = 1

# Channel types.
CHANNEL_MAIN = 1
CHANNEL_DISPLAY = 2
CHANNEL_INPUTS = 3
CHANNEL_CURSOR = 4
CHANNEL_PLAYBACK = 5

# Link errors.
LINK_OK = 0
LINK_ERR_INVALID_DATA = 3
LINK_ERR_PERMISSION_DENIED = 7
LINK_ERR_BAD_CONNECTION_ID = 8


class SpiceLinkError(Exception):
    """The peer broke the link protocol (the message says how)."""


@dataclass(frozen=True)
class LinkMess:
    """A client's SpiceLinkMess, with the exact bytes (header included) it came in."""

    connection_id: int
    channel_type: int
    channel_id: int
    common_caps: tuple[int, ...]
    channel_caps: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True)
class LinkReply:
    """A server's SpiceLinkReply."""

    error: int
    pub_key: bytes
    common_caps: tuple[int, ...]
    channel_caps: tuple[int, ...]


def has_cap(caps: tuple[int, ...], bit: int) -> bool:
    word, shift = divmod(bit, 32)
    return word < len(caps) and bool(caps[word] >> shift & 1)


def header(size: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION_MAJOR, VERSION_MINOR, size)


def _read_caps(
    body: bytes, *, fixed: int, counts: tuple[int, int], offset: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    common, channel = counts
    end = offset + 4 * (common + channel)
    if offset < fixed or end > len(body) or common + channel > 64:
        raise SpiceLinkError("capabilities outside the link message")
    words = struct.unpack_from(f"<{common + channel}I", body, offset)
    return tuple(words[:common]), tuple(words[common:])


def _caps_bytes(common: tuple[int, ...], channel: tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(common) + len(channel)}I", *common, *channel)


def parse_header(data: bytes) -> int:
    """The size a SpiceLinkHeader announces (raise on a bad magic or version)."""
    magic, major, _minor, size = HEADER.unpack(data)
    if magic != MAGIC:
        raise SpiceLinkError("not a SPICE link (bad magic)")
    if major != VERSION_MAJOR:
        raise SpiceLinkError(f"SPICE protocol version {major} is not supported")
    if not MESS.size <= size <= MAX_LINK_BYTES:
        raise SpiceLinkError("link message of an impossible size")
    return int(size)


def parse_mess(raw: bytes) -> LinkMess:
    """A client's header and SpiceLinkMess (exactly those bytes)."""
    body = raw[HEADER.size :]
    connection_id, channel_type, channel_id, n_common, n_channel, offset = MESS.unpack_from(body)
    common, channel = _read_caps(body, fixed=MESS.size, counts=(n_common, n_channel), offset=offset)
    return LinkMess(connection_id, channel_type, channel_id, common, channel, bytes(raw))


def build_mess(
    *,
    connection_id: int,
    channel_type: int,
    channel_id: int,
    common: tuple[int, ...],
    channel: tuple[int, ...] = (),
) -> bytes:
    """A client's header and SpiceLinkMess (for tests and tools)."""
    body = MESS.pack(connection_id, channel_type, channel_id, len(common), len(channel), MESS.size)
    body += _caps_bytes(common, channel)
    return header(len(body)) + body


def parse_reply(body: bytes) -> LinkReply:
    """A server's SpiceLinkReply (without its header)."""
    if len(body) < U32.size:
        raise SpiceLinkError("link reply too short")
    (error,) = U32.unpack_from(body)
    if error != LINK_OK:
        return LinkReply(error, b"", (), ())
    if len(body) < REPLY.size:
        raise SpiceLinkError("link reply too short")
    _, pub_key, n_common, n_channel, offset = REPLY.unpack_from(body)
    common, channel = _read_caps(
        body, fixed=REPLY.size, counts=(n_common, n_channel), offset=offset
    )
    return LinkReply(error, bytes(pub_key), common, channel)


def build_reply(
    *,
    error: int = LINK_OK,
    pub_key: bytes = b"",
    common: tuple[int, ...] = (),
    channel: tuple[int, ...] = (),
) -> bytes:
    """A server's header and SpiceLinkReply (an error reply carries zeroes)."""
    if len(pub_key) not in (0, PUBKEY_BYTES):
        raise ValueError("a SPICE public key is 162 bytes")
    body = REPLY.pack(error, pub_key, len(common), len(channel), REPLY.size)
    body += _caps_bytes(common, channel)
    return header(len(body)) + body


@cache
def relay_key() -> rsa.RSAPrivateKey:
    """The relay's own RSA-1024 key (per process): the browser encrypts a dummy ticket
    with it. 1024 bits is what the protocol fixes; the real password never uses it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


def relay_public_key() -> bytes:
    der = (
        relay_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert len(der) == PUBKEY_BYTES
    return der


def encrypt_ticket(*, pub_key: bytes, password: str) -> bytes:
    """The 128-byte ticket for `password`: RSA-OAEP with SHA-1, NUL-terminated."""
    key = serialization.load_der_public_key(pub_key)
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 8 * TICKET_BYTES:
        raise SpiceLinkError("the SPICE server's key is not RSA-1024")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    return key.encrypt(password.encode() + b"\0", oaep)


def decrypt_ticket(ticket: bytes) -> bytes:
    """What a browser encrypted with the relay's key (for tests: the relay ignores it)."""
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    return relay_key().decrypt(ticket, oaep)


class _Reader:
    """Bytes in, exact-length records out."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def take(self, length: int) -> bytes | None:
        if len(self.buffer) < length:
            return None
        taken = bytes(self.buffer[:length])
        del self.buffer[:length]
        return taken

    def rest(self) -> bytes:
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest


class BrowserLink:
    """The relay as the SPICE server of one browser channel.

    `receive` until `mess` is set; then `reply` (or `refuse`); `receive` until
    `ticket_received`; then `result`. `leftover` holds what came after the ticket.
    """

    def __init__(self) -> None:
        self._reader = _Reader()
        self._size: int | None = None
        self.mess: LinkMess | None = None
        self._expect_ticket = 0
        self.ticket_received = False

    def receive(self, data: bytes) -> None:
        self._reader.feed(data)
        if self.mess is None:
            self._read_mess()
        elif self._expect_ticket and not self.ticket_received:
            ticket = self._reader.take(self._expect_ticket)
            if ticket is not None:
                self._check_mechanism(ticket)
                self.ticket_received = True
        if len(self._reader.buffer) > MAX_LINK_BYTES:
            raise SpiceLinkError("too much data before the link completed")

    def _read_mess(self) -> None:
        if self._size is None:
            head = self._reader.take(HEADER.size)
            if head is None:
                return
            self._size = parse_header(head)
            self._head = head
        body = self._reader.take(self._size)
        if body is not None:
            self.mess = parse_mess(self._head + body)

    def reply(self, upstream: LinkReply) -> bytes:
        """QEMU's reply with the relay's key in place of QEMU's."""
        assert self.mess is not None
        selection = has_cap(self.mess.common_caps, CAP_AUTH_SELECTION) and has_cap(
            upstream.common_caps, CAP_AUTH_SELECTION
        )
        self._expect_ticket = TICKET_BYTES + (U32.size if selection else 0)
        self._selection = selection
        return build_reply(
            pub_key=relay_public_key(), common=upstream.common_caps, channel=upstream.channel_caps
        )

    def _check_mechanism(self, ticket: bytes) -> None:
        if self._selection and U32.unpack_from(ticket)[0] != AUTH_MECHANISM_SPICE:
            raise SpiceLinkError("only SPICE ticket authentication is offered")
        self.ticket = ticket[-TICKET_BYTES:]

    @staticmethod
    def refuse(error: int) -> bytes:
        return build_reply(error=error)

    @staticmethod
    def result(code: int = LINK_OK) -> bytes:
        return U32.pack(code)

    @property
    def leftover(self) -> bytes:
        return self._reader.rest()


class GuestLinkClient:
    """The relay as the SPICE client of QEMU for one channel.

    `start()` gives the browser's link message to send; `receive` until `reply` is set;
    `auth(password)` gives the ticket; `receive` until `result` is set.
    """

    def __init__(self, mess: LinkMess) -> None:
        self.mess = mess
        self._reader = _Reader()
        self._size: int | None = None
        self.reply: LinkReply | None = None
        self.result: int | None = None
        self._authing = False

    def start(self) -> bytes:
        return self.mess.raw

    def receive(self, data: bytes) -> None:
        self._reader.feed(data)
        if self.reply is None:
            self._read_reply()
        elif self._authing and self.result is None:
            code = self._reader.take(U32.size)
            if code is not None:
                self.result = U32.unpack(code)[0]

    def _read_reply(self) -> None:
        if self._size is None:
            head = self._reader.take(HEADER.size)
            if head is None:
                return
            magic, major, _minor, size = HEADER.unpack(head)
            if magic != MAGIC or major != VERSION_MAJOR or size > MAX_LINK_BYTES:
                raise SpiceLinkError("the guest's display answered with no SPICE link reply")
            self._size = size
        body = self._reader.take(self._size)
        if body is not None:
            self.reply = parse_reply(body)

    def auth(self, password: str) -> bytes:
        """The auth mechanism (if negotiated) and the real password, for QEMU only."""
        assert self.reply is not None and self.reply.error == LINK_OK
        if not has_cap(self.reply.common_caps, CAP_AUTH_SPICE) and has_cap(
            self.reply.common_caps, CAP_AUTH_SELECTION
        ):
            raise SpiceLinkError("the guest's display does not offer SPICE ticket auth")
        selection = has_cap(self.mess.common_caps, CAP_AUTH_SELECTION) and has_cap(
            self.reply.common_caps, CAP_AUTH_SELECTION
        )
        self._authing = True
        mechanism = U32.pack(AUTH_MECHANISM_SPICE) if selection else b""
        return mechanism + encrypt_ticket(pub_key=self.reply.pub_key, password=password)

    @property
    def mini_header(self) -> bool:
        assert self.reply is not None
        return has_cap(self.mess.common_caps, CAP_MINI_HEADER) and has_cap(
            self.reply.common_caps, CAP_MINI_HEADER
        )

    @property
    def leftover(self) -> bytes:
        return self._reader.rest()
