"""The client-to-server message filter: framing, limits, view-only, splitting and fuzzing."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.console import messages as m
from vms.console.rfb import ClientMessageFilter, RfbProtocolError

# (name as counted by the filter, message as noVNC sends it, forwarded in view-only mode?)
CATALOGUE: list[tuple[str, bytes, bool]] = [
    ("SetPixelFormat", m.set_pixel_format(24), True),
    ("SetEncodings", m.set_encodings([m.ENC_RAW, m.ENC_COPY_RECT]), True),
    ("FramebufferUpdateRequest", m.fb_update_request(True, 0, 0, 640, 480), True),
    ("EnableContinuousUpdates", m.enable_continuous_updates(True, 0, 0, 640, 480), True),
    ("ClientFence", m.client_fence(0x80000002, b"abc"), True),
    ("KeyEvent", m.key_event(True, 0xFF0D), False),
    ("PointerEvent", m.pointer_event(1, 10, 20), False),
    ("ClientCutText", m.client_cut_text(b"rm -rf /"), False),
    ("QemuExtendedKeyEvent", m.qemu_extended_key_event(True, 0x61, 0x1E), False),
    ("QemuAudio", m.qemu_audio_enable(), False),
    ("QemuAudio", m.qemu_audio_set_format(3, 2, 44100), False),
    ("Xvp", m.xvp(1, 4), False),  # xvp reset
    ("SetDesktopSize", m.set_desktop_size(1024, 768), False),
]

EXPECTED_LENGTHS = {
    "SetPixelFormat": 20,
    "FramebufferUpdateRequest": 10,
    "EnableContinuousUpdates": 10,
    "KeyEvent": 8,
    "PointerEvent": 6,
    "QemuExtendedKeyEvent": 12,
    "Xvp": 4,
    "SetDesktopSize": 24,
}


def test_catalogue_lengths_match_rfbproto() -> None:
    for name, message, _ in CATALOGUE:
        if name in EXPECTED_LENGTHS:
            assert len(message) == EXPECTED_LENGTHS[name], name


@pytest.mark.parametrize(("name", "message", "view_ok"), CATALOGUE)
def test_interactive_forwards_each_message(name: str, message: bytes, view_ok: bool) -> None:
    flt = ClientMessageFilter(view_only=False)
    assert flt.feed(message) == message
    assert flt.forwarded_messages == 1
    assert flt.forwarded_by_type == {name: 1}
    assert flt.dropped_messages == 0
    assert flt.buffered == 0


@pytest.mark.parametrize(("name", "message", "view_ok"), CATALOGUE)
def test_view_only_each_message(name: str, message: bytes, view_ok: bool) -> None:
    flt = ClientMessageFilter(view_only=True)
    out = flt.feed(message)
    if view_ok:
        assert out == message
        assert (flt.forwarded_messages, flt.dropped_messages) == (1, 0)
    else:
        assert out == b""
        assert (flt.forwarded_messages, flt.dropped_messages) == (0, 1)
        assert flt.dropped_by_type == {name: 1}
    assert flt.buffered == 0


def test_view_only_mixed_stream_counts() -> None:
    stream = b"".join(message for _, message, _ in CATALOGUE)
    flt = ClientMessageFilter(view_only=True)
    out = flt.feed(stream)
    assert out == b"".join(message for _, message, ok in CATALOGUE if ok)
    assert flt.forwarded_messages == 5
    assert flt.dropped_messages == 8
    assert flt.dropped_by_type == {
        "KeyEvent": 1,
        "PointerEvent": 1,
        "ClientCutText": 1,
        "QemuExtendedKeyEvent": 1,
        "QemuAudio": 2,
        "Xvp": 1,
        "SetDesktopSize": 1,
    }
    assert flt.forwarded_bytes == len(out)


def test_novnc_set_encodings_loses_only_extended_mouse_buttons() -> None:
    flt = ClientMessageFilter(view_only=False)
    out = flt.feed(m.set_encodings(m.NOVNC_ENCODINGS))
    expected = [e for e in m.NOVNC_ENCODINGS if e != m.PSEUDO_EXT_MOUSE_BUTTONS]
    assert out == m.set_encodings(expected)
    # With the pseudo-encoding stripped, a pointer event with bit 7 set is still 6 bytes.
    event = m.u8(5) + m.u8(0x80) + m.u16(1) + m.u16(2)
    assert flt.feed(event + m.key_event(True, 0x61)) == event + m.key_event(True, 0x61)


def test_extended_clipboard_needs_the_pseudo_encoding() -> None:
    with pytest.raises(RfbProtocolError, match="without the extension"):
        ClientMessageFilter(view_only=False).feed(m.extended_clipboard_caps())
    flt = ClientMessageFilter(view_only=False)
    stream = m.set_encodings([m.ENC_RAW, m.PSEUDO_EXT_CLIPBOARD]) + m.extended_clipboard_caps()
    assert flt.feed(stream) == stream
    # SetEncodings replaces the previous list: without the pseudo-encoding it is off again.
    with pytest.raises(RfbProtocolError, match="without the extension"):
        flt.feed(m.set_encodings([m.ENC_RAW]) + m.extended_clipboard_caps())
    viewer = ClientMessageFilter(view_only=True)
    assert viewer.feed(stream) == m.set_encodings([m.ENC_RAW, m.PSEUDO_EXT_CLIPBOARD])
    assert viewer.dropped_by_type == {"ClientCutText": 1}


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (m.u8(1), "unknown client message type 1"),  # SetColourMapEntries: server-only
        (m.u8(7), "unknown client message type 7"),  # FileTransfer
        (m.u8(253) + bytes(20), "unknown client message type 253"),  # gii: not sent by noVNC
        (m.u8(149), "unknown client message type 149"),
        (m.u8(255) + m.u8(2), "sub-type 2"),
        (m.u8(255) + m.u8(1) + m.u16(3), "audio operation 3"),
        (m.u8(0) + bytes(3) + m.u8(24), "24 bits per pixel"),
        (m.u8(2) + m.u8(0) + m.u16(1025), "1025 encodings"),
        (m.u8(6) + bytes(3) + m.u32((1 << 20) + 1), "exceeds the limit"),
        (m.u8(6) + bytes(3) + m.u32(0x80000000), "without the extension"),
        (m.u8(248) + bytes(3) + m.u32(0) + m.u8(65), "65-byte payload"),
    ],
)
def test_rejects_early_from_the_header(message: bytes, error: str) -> None:
    flt = ClientMessageFilter(view_only=False)
    with pytest.raises(RfbProtocolError, match=error):
        flt.feed(message)
    # The filter stays closed after an error.
    with pytest.raises(RfbProtocolError, match="already rejected"):
        flt.feed(m.fb_update_request(False, 0, 0, 1, 1))


def test_extended_cut_text_bounds() -> None:
    flt = ClientMessageFilter(view_only=False, max_cut_text=100)
    flt.feed(m.set_encodings([m.PSEUDO_EXT_CLIPBOARD]))
    with pytest.raises(RfbProtocolError, match="exceeds the limit"):
        flt.feed(m.u8(6) + bytes(3) + m.u32(0x80000000))  # INT32_MIN: |length| overflows
    flt = ClientMessageFilter(view_only=False)
    flt.feed(m.set_encodings([m.PSEUDO_EXT_CLIPBOARD]))
    with pytest.raises(RfbProtocolError, match="shorter than its flags"):
        flt.feed(m.u8(6) + bytes(3) + m.u32(-3) + b"abc")


def test_cut_text_limit_is_inclusive_and_configurable() -> None:
    flt = ClientMessageFilter(view_only=False, max_cut_text=16)
    assert flt.feed(m.client_cut_text(b"x" * 16)) == m.client_cut_text(b"x" * 16)
    with pytest.raises(RfbProtocolError):
        flt.feed(m.client_cut_text(b"x" * 17)[:8])


def test_partial_messages_are_buffered() -> None:
    flt = ClientMessageFilter(view_only=False)
    text = m.client_cut_text(b"hello world")
    assert flt.feed(text[:3]) == b""
    assert flt.buffered == 3
    assert flt.feed(text[3:12]) == b""
    assert flt.feed(text[12:] + m.key_event(True, 1)[:5]) == text
    assert flt.buffered == 5
    assert flt.feed(m.key_event(True, 1)[5:]) == m.key_event(True, 1)
    assert flt.buffered == 0
    assert flt.forwarded_messages == 2


def test_large_cut_text_in_many_chunks_is_fast() -> None:
    payload = bytes(1 << 20)
    message = m.client_cut_text(payload)
    flt = ClientMessageFilter(view_only=False)
    out = bytearray()
    for start in range(0, len(message), 4096):
        out += flt.feed(message[start : start + 4096])
    assert bytes(out) == message


def test_max_message_size() -> None:
    assert ClientMessageFilter(view_only=True).max_message_size == 8 + (1 << 20)
    assert ClientMessageFilter(view_only=True, max_cut_text=0).max_message_size == 4 + 4 * 1024
    with pytest.raises(ValueError):
        ClientMessageFilter(view_only=True, max_cut_text=-1)


# --- property tests -----------------------------------------------------------------------

u16s = st.integers(0, 0xFFFF)
u32s = st.integers(0, 0xFFFFFFFF)

# Each strategy yields (name, message bytes, bytes the filter should forward interactively).
Entry = tuple[str, bytes, bytes]


def plain(name: str) -> Callable[[bytes], Entry]:
    return lambda message: (name, message, message)


def encodings_entry(encodings: list[int]) -> Entry:
    kept = [e for e in encodings if e != m.PSEUDO_EXT_MOUSE_BUTTONS]
    return "SetEncodings", m.set_encodings(encodings), m.set_encodings(kept)


encoding_values = st.one_of(
    st.sampled_from(m.NOVNC_ENCODINGS), st.integers(-(2**31), 2**31 - 1).map(lambda e: e)
)

valid_messages = st.one_of(
    st.builds(m.set_pixel_format, st.sampled_from([8, 16, 24]), st.booleans()).map(
        plain("SetPixelFormat")
    ),
    # A later SetEncodings replaces the earlier one, so it keeps the extended clipboard.
    st.lists(encoding_values, max_size=40).map(
        lambda encodings: encodings_entry([*encodings, m.PSEUDO_EXT_CLIPBOARD])
    ),
    st.builds(m.fb_update_request, st.booleans(), u16s, u16s, u16s, u16s).map(
        plain("FramebufferUpdateRequest")
    ),
    st.builds(m.key_event, st.booleans(), u32s).map(plain("KeyEvent")),
    st.builds(m.pointer_event, st.integers(0, 0x7F), u16s, u16s).map(plain("PointerEvent")),
    st.binary(max_size=300).map(m.client_cut_text).map(plain("ClientCutText")),
    st.binary(min_size=4, max_size=300).map(m.extended_client_cut_text).map(plain("ClientCutText")),
    st.builds(m.enable_continuous_updates, st.booleans(), u16s, u16s, u16s, u16s).map(
        plain("EnableContinuousUpdates")
    ),
    st.builds(m.client_fence, u32s, st.binary(max_size=64)).map(plain("ClientFence")),
    st.builds(m.xvp, st.integers(0, 255), st.integers(0, 255)).map(plain("Xvp")),
    st.builds(m.set_desktop_size, u16s, u16s, u32s, u32s).map(plain("SetDesktopSize")),
    st.builds(m.qemu_extended_key_event, st.booleans(), u32s, u32s).map(
        plain("QemuExtendedKeyEvent")
    ),
    st.sampled_from(
        [m.qemu_audio_enable(), m.qemu_audio_disable(), m.qemu_audio_set_format(0, 1, 8000)]
    ).map(plain("QemuAudio")),
)

VIEW_ONLY_ALLOWED = {
    "SetPixelFormat",
    "SetEncodings",
    "FramebufferUpdateRequest",
    "EnableContinuousUpdates",
    "ClientFence",
}

# Every stream starts with SetEncodings announcing the extended clipboard, as noVNC's does.
PREAMBLE = encodings_entry(m.NOVNC_ENCODINGS)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(valid_messages, max_size=30),
    st.lists(st.integers(0, 1 << 16), max_size=20),
    st.booleans(),
)
def test_any_split_gives_the_expected_output(
    entries: list[Entry], cuts: list[int], view_only: bool
) -> None:
    entries = [PREAMBLE, *entries]
    stream = b"".join(message for _, message, _ in entries)
    expected = b"".join(
        forwarded for name, _, forwarded in entries if not view_only or name in VIEW_ONLY_ALLOWED
    )
    flt = ClientMessageFilter(view_only=view_only)
    out = bytearray()
    for chunk in split(stream, cuts):
        out += flt.feed(chunk)
        assert flt.buffered < flt.max_message_size
    assert bytes(out) == expected
    assert flt.buffered == 0
    assert flt.forwarded_messages + flt.dropped_messages == len(entries)
    if view_only:
        # Re-frame what was forwarded: nothing but viewer messages got through.
        check = ClientMessageFilter(view_only=False)
        check.feed(bytes(out))
        assert set(check.forwarded_by_type) <= VIEW_ONLY_ALLOWED
        assert check.forwarded_messages == flt.forwarded_messages
        dropped = [name for name, _, _ in entries if name not in VIEW_ONLY_ALLOWED]
        assert flt.dropped_messages == len(dropped)
        for name in set(dropped):
            assert flt.dropped_by_type[name] == dropped.count(name)


def feed_until_error(flt: ClientMessageFilter, chunks: list[bytes]) -> tuple[bytes, bool]:
    """Feed chunks; return the output so far and whether RfbProtocolError was raised."""
    out = bytearray()
    for chunk in chunks:
        try:
            out += flt.feed(chunk)
        except RfbProtocolError:
            return bytes(out), True
        assert flt.buffered < flt.max_message_size
    return bytes(out), False


fuzz_input = st.one_of(
    st.binary(max_size=400),
    # Valid messages with random bytes spliced in get the fuzzer past the first byte.
    st.tuples(st.lists(valid_messages, max_size=6), st.binary(max_size=64), st.integers()).map(
        lambda t: (
            b"".join(message for _, message, _ in t[0])[: t[2] % 400]
            + t[1]
            + b"".join(message for _, message, _ in t[0])[t[2] % 400 :]
        )
    ),
)


@settings(max_examples=400, deadline=None)
@given(fuzz_input, st.lists(st.integers(0, 1 << 16), max_size=10), st.booleans(), st.booleans())
def test_fuzz_only_protocol_errors_and_prefix_consistent(
    data: bytes, cuts: list[int], view_only: bool, preamble: bool
) -> None:
    if preamble:
        data = PREAMBLE[1] + data
    # Reference: one byte at a time, which reports an error at the earliest possible point.
    reference, reference_failed = feed_until_error(
        ClientMessageFilter(view_only=view_only, max_cut_text=64),
        [data[i : i + 1] for i in range(len(data))],
    )
    output, failed = feed_until_error(
        ClientMessageFilter(view_only=view_only, max_cut_text=64), split(data, cuts)
    )
    assert failed == reference_failed
    assert reference.startswith(output)
    if not failed:
        assert output == reference


@given(st.binary(min_size=1, max_size=64))
def test_fuzz_buffering_is_bounded(garbage: bytes) -> None:
    # However the bytes are chosen, the filter never holds more than one maximal message.
    flt = ClientMessageFilter(view_only=True, max_cut_text=32, max_encodings=4)
    try:
        for _ in range(200):
            flt.feed(garbage)
            assert flt.buffered < flt.max_message_size
    except RfbProtocolError:
        pass


def test_struct_sanity_of_extended_clipboard_constant() -> None:
    assert struct.pack(">I", m.PSEUDO_EXT_CLIPBOARD) == bytes.fromhex("c0a1e5ce")
