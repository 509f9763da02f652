"""Byte-exact tests of the upstream (relay -> QEMU) and downstream (browser -> relay) handshakes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.console.messages import server_init, u32
from vms.console.rfb import (
    DownstreamHandshake,
    RfbProtocolError,
    ServerInit,
    UpstreamHandshake,
)

CHALLENGE = bytes(i * 0x11 for i in range(16))
# noVNC 1.7.0's DES for password "s3cret" and CHALLENGE (see test_vncauth.py).
S3CRET_RESPONSE = bytes.fromhex("69e55a0a6fb36a1b1c15a391e1ea0378")
OK = u32(0)


def reason(text: bytes) -> bytes:
    return u32(len(text)) + text


# --- upstream -----------------------------------------------------------------------------


def test_upstream_38_vnc_auth_byte_exact() -> None:
    handshake = UpstreamHandshake("s3cret")
    assert handshake.receive(b"RFB 003.008\n") == b"RFB 003.008\n"
    # Offered None and VNC Authentication: VNC Authentication is chosen.
    assert handshake.receive(b"\x02\x01\x02") == b"\x02"
    assert handshake.security_type == 2
    assert handshake.receive(CHALLENGE) == S3CRET_RESPONSE
    # SecurityResult OK -> ClientInit with shared-flag 1.
    assert handshake.receive(OK) == b"\x01"
    assert not handshake.done
    init = server_init(name=b"QEMU (vm-1)")
    assert handshake.receive(init[:10]) == b""
    assert handshake.receive(init[10:] + b"\x00\x00rest") == b""
    assert handshake.done
    assert handshake.server_init == init
    assert handshake.leftover == b"\x00\x00rest"
    assert handshake.version == (3, 8)
    parsed = ServerInit.parse(handshake.server_init)
    assert (parsed.width, parsed.height, parsed.desktop_name) == (640, 480, "QEMU (vm-1)")


def test_upstream_38_all_in_one_chunk() -> None:
    handshake = UpstreamHandshake("s3cret")
    assert handshake.receive(b"RFB 003.008\n") == b"RFB 003.008\n"
    assert handshake.receive(b"\x01\x02" + CHALLENGE) == b"\x02" + S3CRET_RESPONSE
    assert handshake.receive(OK + server_init()) == b"\x01"
    assert handshake.done
    assert handshake.leftover == b""


def test_upstream_38_security_none() -> None:
    handshake = UpstreamHandshake("unused")
    handshake.receive(b"RFB 003.008\n")
    assert handshake.receive(b"\x01\x01") == b"\x01"
    # 3.8 sends a SecurityResult even for None.
    assert handshake.receive(OK) == b"\x01"
    handshake.receive(server_init())
    assert handshake.done


def test_upstream_37_none_has_no_security_result() -> None:
    handshake = UpstreamHandshake("unused")
    assert handshake.receive(b"RFB 003.007\n") == b"RFB 003.007\n"
    # Type choice and ClientInit at once: 3.7 has no SecurityResult after None.
    assert handshake.receive(b"\x01\x01") == b"\x01\x01"
    handshake.receive(server_init())
    assert handshake.done


def test_upstream_37_auth_failure_has_no_reason() -> None:
    handshake = UpstreamHandshake("wrong")
    handshake.receive(b"RFB 003.007\n")
    handshake.receive(b"\x01\x02")
    handshake.receive(CHALLENGE)
    with pytest.raises(RfbProtocolError, match="VNC authentication failed"):
        handshake.receive(u32(1))


def test_upstream_33_vnc_auth_byte_exact() -> None:
    handshake = UpstreamHandshake("s3cret")
    assert handshake.receive(b"RFB 003.003\n") == b"RFB 003.003\n"
    # 3.3: the server decides the type (u32); the client sends no choice.
    assert handshake.receive(u32(2)) == b""
    assert handshake.receive(CHALLENGE) == S3CRET_RESPONSE
    assert handshake.receive(OK) == b"\x01"
    handshake.receive(server_init(720, 400))
    assert handshake.done
    assert ServerInit.parse(handshake.server_init).width == 720


def test_upstream_33_security_none() -> None:
    handshake = UpstreamHandshake("unused")
    handshake.receive(b"RFB 003.003\n")
    assert handshake.receive(u32(1)) == b"\x01"
    handshake.receive(server_init())
    assert handshake.done


def test_upstream_33_connection_failed() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.003\n")
    with pytest.raises(RfbProtocolError, match="refused the connection: too many"):
        handshake.receive(u32(0) + reason(b"too many"))


def test_upstream_33_unknown_type() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.003\n")
    with pytest.raises(RfbProtocolError, match="unsupported security type 5"):
        handshake.receive(u32(5))


@pytest.mark.parametrize(
    ("server", "reply"),
    [
        (b"RFB 003.889\n", b"RFB 003.008\n"),  # Apple Remote Desktop
        (b"RFB 004.001\n", b"RFB 003.008\n"),
        (b"RFB 003.005\n", b"RFB 003.003\n"),
        (b"RFB 003.007\n", b"RFB 003.007\n"),
    ],
)
def test_upstream_version_negotiation(server: bytes, reply: bytes) -> None:
    assert UpstreamHandshake("x").receive(server) == reply


BAD_VERSIONS = [
    b"RFB 002.000\n",
    b"RFB 003.002\n",
    b"HTTP/1.1 200",
    b"RFB 003.008\r",
    b"RFB 3.8\n\0\0\0\0",
]


@pytest.mark.parametrize("server", BAD_VERSIONS)
def test_upstream_rejects_bad_version(server: bytes) -> None:
    with pytest.raises(RfbProtocolError):
        UpstreamHandshake("x").receive(server)


def test_upstream_38_connection_refused_with_reason() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.008\n")
    with pytest.raises(RfbProtocolError, match="refused the connection: go away"):
        handshake.receive(b"\x00" + reason(b"go away"))


def test_upstream_no_usable_security_type() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.008\n")
    with pytest.raises(RfbProtocolError, match="no usable security type"):
        handshake.receive(b"\x02\x12\x13")  # TLS, VeNCrypt


def test_upstream_auth_failure_reason_without_nul() -> None:
    handshake = UpstreamHandshake("wrong")
    handshake.receive(b"RFB 003.008\n")
    handshake.receive(b"\x01\x02")
    handshake.receive(CHALLENGE)
    # QEMU counts the C string terminator in the reason.
    with pytest.raises(RfbProtocolError) as caught:
        handshake.receive(u32(1) + reason(b"Authentication failed\0"))
    assert str(caught.value) == "VNC authentication failed: Authentication failed"
    with pytest.raises(RfbProtocolError, match="already failed"):
        handshake.receive(b"")


def test_upstream_rejects_oversized_reason_early() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.008\n")
    with pytest.raises(RfbProtocolError, match="too long"):
        handshake.receive(b"\x00" + u32(1 << 30))


def test_upstream_rejects_oversized_desktop_name_early() -> None:
    handshake = UpstreamHandshake("x")
    handshake.receive(b"RFB 003.008\n")
    handshake.receive(b"\x01\x01")
    handshake.receive(OK)
    with pytest.raises(RfbProtocolError, match="desktop name too long"):
        handshake.receive(server_init()[:20] + u32(1 << 31))


def test_upstream_state_errors_and_repr() -> None:
    handshake = UpstreamHandshake("hunter22")
    assert "hunter22" not in repr(handshake)
    with pytest.raises(RuntimeError):
        _ = handshake.server_init
    for chunk in (b"RFB 003.008\n", b"\x01\x02", CHALLENGE, OK, server_init()):
        handshake.receive(chunk)
    assert handshake.done
    assert "hunter22" not in repr(handshake)
    with pytest.raises(RfbProtocolError, match="already finished"):
        handshake.receive(b"\x00")


UPSTREAM_SERVER_STREAM = b"RFB 003.008\n" + b"\x02\x01\x02" + CHALLENGE + OK + server_init()
UPSTREAM_CLIENT_STREAM = b"RFB 003.008\n" + b"\x02" + S3CRET_RESPONSE + b"\x01"


@given(st.lists(st.integers(0, len(UPSTREAM_SERVER_STREAM)), max_size=8), st.binary(max_size=20))
def test_upstream_any_split(cuts: list[int], tail: bytes) -> None:
    stream = UPSTREAM_SERVER_STREAM + tail
    points = sorted(set(cuts))
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    handshake = UpstreamHandshake("s3cret")
    sent = bytearray()
    leftover = b""
    for chunk in chunks:
        if handshake.done:
            leftover += chunk
            continue
        sent += handshake.receive(chunk)
        if handshake.done:
            leftover += handshake.leftover
    assert handshake.done
    assert bytes(sent) == UPSTREAM_CLIENT_STREAM
    assert handshake.server_init == server_init()
    assert leftover == tail


# --- downstream ---------------------------------------------------------------------------


def test_downstream_38_byte_exact() -> None:
    handshake = DownstreamHandshake()
    assert handshake.start() == b"RFB 003.008\n"
    assert handshake.receive(b"RFB 003.008\n") == b"\x01\x01"  # one type: None
    assert handshake.receive(b"\x01") == OK  # SecurityResult for None in 3.8
    assert handshake.receive(b"\x00") == b""  # ClientInit, exclusive requested: ignored
    assert handshake.client_shared_flag == 0
    assert not handshake.done
    init = server_init()
    assert handshake.server_init(init) == init
    assert handshake.done
    assert handshake.leftover == b""


def test_downstream_37_has_no_security_result() -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    assert handshake.receive(b"RFB 003.007\n") == b"\x01\x01"
    assert handshake.receive(b"\x01") == b""
    assert handshake.receive(b"\x01") == b""
    assert handshake.server_init(server_init()) == server_init()
    assert handshake.version == (3, 7)


def test_downstream_33_server_decides_type() -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    assert handshake.receive(b"RFB 003.003\n") == u32(1)  # security type None, as a u32
    assert handshake.receive(b"\x01") == b""  # straight to ClientInit
    assert handshake.server_init(server_init()) == server_init()
    assert handshake.done


def test_downstream_server_init_before_client_init_and_leftover() -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    assert handshake.server_init(server_init()) == b""
    out = handshake.receive(b"RFB 003.008\n\x01\x01\x03\x01\x00\x00")
    assert out == b"\x01\x01" + OK + server_init()
    assert handshake.done
    assert handshake.leftover == b"\x03\x01\x00\x00"


def test_downstream_buffers_early_client_bytes() -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    handshake.receive(b"RFB 003.008\n\x01\x01")
    assert handshake.receive(b"\x03\x00") == b""
    assert handshake.server_init(server_init()) == server_init()
    assert handshake.leftover == b"\x03\x00"


def test_downstream_bounds_early_client_bytes() -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    handshake.receive(b"RFB 003.008\n\x01\x01")
    with pytest.raises(RfbProtocolError, match="too much"):
        handshake.receive(bytes(64 * 1024 + 1))


@pytest.mark.parametrize(
    "client",
    [b"RFB 003.005\n", b"RFB 003.889\n", b"RFB 004.000\n", b"RFB 003.006\n", b"GET / HTTP/1.1"],
)
def test_downstream_rejects_versions(client: bytes) -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    with pytest.raises(RfbProtocolError):
        handshake.receive(client)
    with pytest.raises(RfbProtocolError, match="already failed"):
        handshake.receive(b"")


@pytest.mark.parametrize("choice", [b"\x00", b"\x02", b"\x10", b"\x13"])
def test_downstream_rejects_other_security_types(choice: bytes) -> None:
    handshake = DownstreamHandshake()
    handshake.start()
    handshake.receive(b"RFB 003.008\n")
    with pytest.raises(RfbProtocolError, match="only 1 is offered"):
        handshake.receive(choice)


def test_downstream_misuse() -> None:
    handshake = DownstreamHandshake()
    with pytest.raises(RfbProtocolError, match="start"):
        handshake.receive(b"RFB 003.008\n")
    handshake.start()
    with pytest.raises(RfbProtocolError, match="already started"):
        handshake.start()
    with pytest.raises(RfbProtocolError, match="too short"):
        handshake.server_init(b"\x00" * 10)
    with pytest.raises(RfbProtocolError, match="does not match"):
        handshake.server_init(server_init() + b"x")
    handshake.server_init(server_init())
    with pytest.raises(RfbProtocolError, match="already given"):
        handshake.server_init(server_init())


@given(st.lists(st.integers(0, 15), max_size=6))
def test_downstream_any_split(cuts: list[int]) -> None:
    stream = b"RFB 003.008\n\x01\x01"
    points = sorted(set(cuts))
    handshake = DownstreamHandshake()
    sent = bytearray(handshake.start())
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        sent += handshake.receive(stream[a:b])
    sent += handshake.server_init(server_init())
    assert handshake.done
    assert bytes(sent) == b"RFB 003.008\n\x01\x01" + OK + server_init()


def test_relay_wiring_end_to_end() -> None:
    """Both handshakes back to back, as the relay runs them, with an in-memory 'QEMU'."""
    upstream = UpstreamHandshake("s3cret")
    downstream = DownstreamHandshake()
    to_browser = bytearray(downstream.start())
    to_qemu = bytearray()
    for chunk in (b"RFB 003.008\n", b"\x01\x02", CHALLENGE, OK, server_init() + b"\x02"):
        to_qemu += upstream.receive(chunk)
    assert upstream.done
    to_browser += downstream.receive(b"RFB 003.008\n")
    to_browser += downstream.receive(b"\x01\x01")
    to_browser += downstream.server_init(upstream.server_init)
    assert bytes(to_qemu) == UPSTREAM_CLIENT_STREAM
    assert bytes(to_browser) == b"RFB 003.008\n\x01\x01" + OK + server_init()
    # Nothing derived from the password goes to the browser.
    assert S3CRET_RESPONSE not in to_browser
    assert upstream.leftover == b"\x02"
