"""Builders for client-to-server RFB messages, written after noVNC 1.7.0's ``RFB.messages``.

They are deliberately independent of ``vms.console.rfb`` so that the tests check the filter
against an outside description of the wire format.
"""

from __future__ import annotations

import struct

# noVNC 1.7.0 core/encodings.js
ENC_COPY_RECT = 1
ENC_TIGHT = 7
ENC_TIGHT_PNG = -260
ENC_ZRLE = 16
ENC_JPEG = 21
ENC_HEXTILE = 5
ENC_RRE = 2
ENC_ZLIB = 6
ENC_RAW = 0
PSEUDO_QUALITY_0 = -32
PSEUDO_COMPRESS_0 = -256
PSEUDO_DESKTOP_SIZE = -223
PSEUDO_LAST_RECT = -224
PSEUDO_CURSOR = -239
PSEUDO_QEMU_EXT_KEY = -258
PSEUDO_QEMU_LED = -261
PSEUDO_DESKTOP_NAME = -307
PSEUDO_EXT_DESKTOP_SIZE = -308
PSEUDO_XVP = -309
PSEUDO_FENCE = -312
PSEUDO_CONTINUOUS_UPDATES = -313
PSEUDO_EXT_MOUSE_BUTTONS = -316
PSEUDO_VMWARE_CURSOR = 0x574D5664
PSEUDO_EXT_CLIPBOARD = 0xC0A1E5CE

# What noVNC 1.7.0's _sendEncodings() sends at depth 24 without H.264, quality 6, compression 2.
NOVNC_ENCODINGS = [
    ENC_COPY_RECT,
    ENC_TIGHT,
    ENC_TIGHT_PNG,
    ENC_ZRLE,
    ENC_JPEG,
    ENC_HEXTILE,
    ENC_RRE,
    ENC_ZLIB,
    ENC_RAW,
    PSEUDO_QUALITY_0 + 6,
    PSEUDO_COMPRESS_0 + 2,
    PSEUDO_DESKTOP_SIZE,
    PSEUDO_LAST_RECT,
    PSEUDO_QEMU_EXT_KEY,
    PSEUDO_QEMU_LED,
    PSEUDO_EXT_DESKTOP_SIZE,
    PSEUDO_XVP,
    PSEUDO_FENCE,
    PSEUDO_CONTINUOUS_UPDATES,
    PSEUDO_DESKTOP_NAME,
    PSEUDO_EXT_CLIPBOARD,
    PSEUDO_EXT_MOUSE_BUTTONS,
    PSEUDO_VMWARE_CURSOR,
    PSEUDO_CURSOR,
]


def u8(value: int) -> bytes:
    return bytes([value & 0xFF])


def u16(value: int) -> bytes:
    return (value & 0xFFFF).to_bytes(2, "big")


def u32(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "big")


def set_pixel_format(depth: int = 24, true_color: bool = True) -> bytes:
    bpp = 32 if depth > 16 else 16 if depth > 8 else 8
    bits = depth // 3
    maximum = (1 << bits) - 1
    return (
        u8(0)
        + bytes(3)
        + u8(bpp)
        + u8(depth)
        + u8(0)
        + u8(1 if true_color else 0)
        + u16(maximum) * 3
        + u8(0)
        + u8(bits)
        + u8(bits * 2)
        + bytes(3)
    )


def set_encodings(encodings: list[int]) -> bytes:
    return u8(2) + u8(0) + u16(len(encodings)) + b"".join(u32(e) for e in encodings)


def fb_update_request(incremental: bool, x: int, y: int, w: int, h: int) -> bytes:
    return u8(3) + u8(1 if incremental else 0) + u16(x) + u16(y) + u16(w) + u16(h)


def key_event(down: bool, keysym: int) -> bytes:
    return u8(4) + u8(1 if down else 0) + u16(0) + u32(keysym)


def pointer_event(mask: int, x: int, y: int) -> bytes:
    return u8(5) + u8(mask & 0x7F) + u16(x) + u16(y)


def client_cut_text(data: bytes) -> bytes:
    return u8(6) + bytes(3) + u32(len(data)) + data


def extended_client_cut_text(payload: bytes) -> bytes:
    """``payload`` starts with the 4 bytes of flags; the length is sent negated."""
    return u8(6) + bytes(3) + u32(-len(payload)) + payload


def extended_clipboard_caps() -> bytes:
    # caps | request | peek | notify | provide, format text, with a 10 MiB text limit
    flags = (0x01 | 0x02 | 0x04 | 0x08 | 0x10) << 24 | 0x01
    return extended_client_cut_text(u32(flags) + u32(10 * 1024 * 1024))


def set_desktop_size(width: int, height: int, screen_id: int = 0, flags: int = 0) -> bytes:
    return (
        u8(251)
        + u8(0)
        + u16(width)
        + u16(height)
        + u8(1)
        + u8(0)
        + u32(screen_id)
        + u16(0)
        + u16(0)
        + u16(width)
        + u16(height)
        + u32(flags)
    )


def client_fence(flags: int, payload: bytes) -> bytes:
    return u8(248) + bytes(3) + u32(flags) + u8(len(payload)) + payload


def enable_continuous_updates(enable: bool, x: int, y: int, w: int, h: int) -> bytes:
    return u8(150) + u8(1 if enable else 0) + u16(x) + u16(y) + u16(w) + u16(h)


def qemu_extended_key_event(down: bool, keysym: int, keycode: int) -> bytes:
    return u8(255) + u8(0) + u16(1 if down else 0) + u32(keysym) + u32(keycode)


def qemu_audio_enable() -> bytes:
    return u8(255) + u8(1) + u16(0)


def qemu_audio_disable() -> bytes:
    return u8(255) + u8(1) + u16(1)


def qemu_audio_set_format(fmt: int, channels: int, frequency: int) -> bytes:
    return u8(255) + u8(1) + u16(2) + u8(fmt) + u8(channels) + u32(frequency)


def xvp(version: int, op: int) -> bytes:
    return u8(250) + u8(0) + u8(version) + u8(op)


def server_init(width: int = 640, height: int = 480, name: bytes = b"QEMU") -> bytes:
    # QEMU's default pixel format: 32 bpp, depth 24, little-endian, true colour.
    pixel_format = bytes.fromhex("2018000100ff00ff00ff100800000000")
    return struct.pack(">HH", width, height) + pixel_format + u32(len(name)) + name
