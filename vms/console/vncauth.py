"""VNC Authentication (RFB security type 2): the DES challenge/response.

The server sends a random 16-byte challenge; the client encrypts it with single DES in ECB
mode and sends the 16-byte result back. The key is the password, truncated or padded with
zero bytes to 8 bytes, with the bit order of every key byte reversed (the historical VNC
quirk: the original code fed the DES routine the key with its bits mirrored).

QEMU (like libvirt) stores the password as a UTF-8 string and uses only its first 8 bytes,
so the password is encoded as UTF-8 and truncated to 8 bytes, exactly as QEMU does.

DES is of course weak; VNC Authentication is only acceptable here because the relay talks
to QEMU over loopback (or the management network) with a short-lived per-session password.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

CHALLENGE_LENGTH = 16
"""Length of the server's challenge and of the client's response, in bytes."""

KEY_LENGTH = 8
"""Length of a DES key; longer passwords are truncated, shorter ones zero-padded."""


def _reverse_bits(byte: int) -> int:
    """Return ``byte`` (0-255) with its 8 bits in reverse order."""
    result = 0
    for _ in range(8):
        result = (result << 1) | (byte & 1)
        byte >>= 1
    return result


_REVERSED_BITS = bytes(_reverse_bits(value) for value in range(256))


def vnc_des_key(password: str | bytes) -> bytes:
    """Return the 8-byte DES key that VNC Authentication derives from ``password``."""
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    return raw[:KEY_LENGTH].ljust(KEY_LENGTH, b"\0").translate(_REVERSED_BITS)


def vnc_auth_response(password: str | bytes, challenge: bytes) -> bytes:
    """Return the 16-byte response to a VNC Authentication ``challenge``.

    Raises ``ValueError`` if the challenge is not exactly 16 bytes long.
    """
    if len(challenge) != CHALLENGE_LENGTH:
        raise ValueError(f"VNC challenge must be {CHALLENGE_LENGTH} bytes, got {len(challenge)}")
    key = vnc_des_key(password)
    # Triple DES with K1 = K2 = K3 is single DES (encrypt, decrypt, encrypt with one key).
    # ECB is what the protocol prescribes: each 8-byte half of the challenge on its own.
    cipher = Cipher(TripleDES(key * 3), modes.ECB())  # noqa: S305
    encryptor = cipher.encryptor()
    return encryptor.update(bytes(challenge)) + encryptor.finalize()
