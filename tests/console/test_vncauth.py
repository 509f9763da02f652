"""VNC Authentication (DES challenge/response) against independent vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vms.console.vncauth import vnc_auth_response, vnc_des_key


def mirror(byte: int) -> int:
    """Bit reversal done differently from the implementation: through a binary string."""
    return int(f"{byte:08b}"[::-1], 2)


def test_fips_des_vector_through_vnc_key_mirroring() -> None:
    # FIPS 81 / classic DES vector: key 0123456789ABCDEF, "Now is t" -> 3FA40E8A984D4815.
    # A VNC password whose bytes are the mirrored key bytes must produce that ciphertext.
    des_key = bytes.fromhex("0123456789abcdef")
    password = bytes(mirror(b) for b in des_key)
    assert password == bytes.fromhex("80c4a2e691d5b3f7")
    response = vnc_auth_response(password, b"Now is tNow is t")
    assert response == bytes.fromhex("3fa40e8a984d4815") * 2


def test_zero_key_vector() -> None:
    # DES with the all-zero key on a zero block gives 8CA64DE9C1B123A7 (a published vector);
    # the empty password pads to the zero key.
    assert vnc_auth_response("", bytes(16)) == bytes.fromhex("8ca64de9c1b123a7") * 2


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        # Computed with noVNC 1.7.0's own DES (core/crypto/des.js, RFB.genDES), challenge
        # 00 11 22 ... ff.
        ("s3cret", "69e55a0a6fb36a1b1c15a391e1ea0378"),
        ("password", "b7b9c87777661a7a2299733209bfdfce"),
        ("longpassword123", "1dd2c4ffbc6e6d89537b582804b2446d"),
        ("", "74f4ae777aa431e89ca4757b2414f4d7"),
        ("Pa$$w0rd", "1f900b7736e92cb7c78bd44b9c4cf453"),
    ],
)
def test_matches_novnc(password: str, expected: str) -> None:
    challenge = bytes(i * 0x11 for i in range(16))
    assert vnc_auth_response(password, challenge).hex() == expected


def test_only_first_eight_bytes_count() -> None:
    challenge = bytes(range(16))
    assert vnc_auth_response("abcdefgh", challenge) == vnc_auth_response("abcdefghIJKL", challenge)
    assert vnc_auth_response("abcdefg", challenge) != vnc_auth_response("abcdefgh", challenge)


def test_rejects_wrong_challenge_length() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        vnc_auth_response("x", bytes(15))


@given(st.binary(max_size=12))
def test_key_is_mirrored_padded_password(password: bytes) -> None:
    padded = (password + bytes(8))[:8]
    assert vnc_des_key(password) == bytes(mirror(b) for b in padded)


@given(st.text(max_size=12))
def test_text_password_is_utf8(password: str) -> None:
    assert vnc_des_key(password) == vnc_des_key(password.encode("utf-8"))
