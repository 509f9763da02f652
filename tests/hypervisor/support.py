"""Constants and helpers shared by the hypervisor tests."""

from __future__ import annotations

import os
import socket
import struct
import time

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

TEST_URI = "test:///default"
TEST_DRIVER_POOL = "default-pool"
SYSTEM_URI = os.environ.get("HYPERVISOR_TEST_URI", "qemu:///system")
SYSTEM_POOL = "portal-test"
SYSTEM_POOL_PATH = "/var/lib/desktop-portal/test-pool"
DEMO_GUEST_IMAGE = os.environ.get(
    "DEMO_GUEST_IMAGE", "/var/lib/desktop-portal/images/demo-desktop.qcow2"
)


# --- a minimal RFB (VNC) client, enough to check what QEMU offers --------------------------

RFB_BANNER = b"RFB 003.008\n"
SEC_NONE = 1
SEC_VNC_AUTH = 2


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(data)}/{n} bytes")
        data += chunk
    return data


def wait_for_banner(host: str, port: int, *, timeout_s: float = 10.0) -> bytes:
    """Connect (retrying until the server listens) and return the 12-byte RFB banner."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                return _recv_exact(sock, 12)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def vnc_des_response(challenge: bytes, password: str) -> bytes:
    """VNC authentication: DES-encrypt the challenge with the bit-reversed password."""
    key = password.encode("latin-1")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(challenge) + encryptor.finalize()


class RfbSession:
    """One RFB 3.8 connection to a VNC server."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.banner = _recv_exact(self.sock, 12)
        self.sock.sendall(RFB_BANNER)
        count = _recv_exact(self.sock, 1)[0]
        if count == 0:
            (length,) = struct.unpack(">I", _recv_exact(self.sock, 4))
            raise ConnectionError(_recv_exact(self.sock, length).decode(errors="replace"))
        self.security_types = list(_recv_exact(self.sock, count))

    def authenticate(self, password: str) -> bool:
        """VNC authentication (type 2); True when the server accepts the password."""
        self.sock.sendall(bytes([SEC_VNC_AUTH]))
        challenge = _recv_exact(self.sock, 16)
        self.sock.sendall(vnc_des_response(challenge, password))
        (result,) = struct.unpack(">I", _recv_exact(self.sock, 4))
        return result == 0

    def client_init(self, *, shared: bool) -> tuple[int, int]:
        """Send ClientInit; return the framebuffer size from ServerInit."""
        self.sock.sendall(bytes([1 if shared else 0]))
        width, height = struct.unpack(">HH", _recv_exact(self.sock, 4))
        _recv_exact(self.sock, 16)  # pixel format
        (name_length,) = struct.unpack(">I", _recv_exact(self.sock, 4))
        _recv_exact(self.sock, name_length)
        return width, height

    def is_open(self) -> bool:
        """Whether the server still keeps this connection (asks for a tiny update)."""
        try:
            # FramebufferUpdateRequest (incremental=0) for a 1x1 area.
            self.sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1))
            self.sock.settimeout(3)
            return bool(self.sock.recv(1))
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()
