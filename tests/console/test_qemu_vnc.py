"""UpstreamHandshake against a real QEMU VNC server with a password (no libvirt needed).

QEMU runs stopped (-S) with no guest; its VNC server still serves the VGA placeholder screen.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vms.console.rfb import RfbProtocolError, ServerInit, UpstreamHandshake
from vms.console.vncauth import vnc_auth_response

QEMU = shutil.which("qemu-system-x86_64")
PASSWORD = "s3cret"
TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0

pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


class Qmp:
    """A minimal QMP client over QEMU's unix socket."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(STARTUP_TIMEOUT)  # the greeting comes once QEMU is up
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._read()  # greeting
        self._sock.settimeout(TIMEOUT)
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self._file.readline()
            if not line:
                raise EOFError("QMP closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply["return"]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@dataclass
class QemuVnc:
    port: int
    qmp: Qmp


@pytest.fixture(scope="module")
def qemu_vnc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuVnc]:
    assert QEMU is not None
    qmp_path = tmp_path_factory.mktemp("qemu") / "qmp.sock"
    # The test listens on QMP's socket itself and hands it to QEMU: connecting works from
    # the start, and the greeting says QEMU is ready (the socket file's existence says not).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(qmp_path))
    listener.listen(1)
    with listener:
        process = subprocess.Popen(
            [
                QEMU,
                "-accel", "tcg",
                "-display", "none",
                "-nodefaults",
                "-vga", "std",
                "-m", "32",
                "-name", "rfbtest",
                # QEMU picks the first free display in 50..99 itself: no port race.
                "-vnc", "127.0.0.1:50,to=99,password=on",
                "-chardev", f"socket,id=qmp,fd={listener.fileno()},server=on,wait=off",
                "-mon", "chardev=qmp,mode=control",
                "-S",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(listener.fileno(),),
        )  # fmt: skip
    qmp: Qmp | None = None
    try:
        try:
            qmp = Qmp(qmp_path)
        except (OSError, EOFError) as exc:
            process.terminate()
            stderr = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"QEMU did not start ({exc}): {stderr}")
        qmp.execute("change-vnc-password", password=PASSWORD)
        info = qmp.execute("query-vnc")
        assert info["auth"] == "vnc"
        yield QemuVnc(int(info["service"]), qmp)
    finally:
        if qmp is not None:
            qmp.close()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def handshake(port: int, password: str) -> tuple[socket.socket, UpstreamHandshake]:
    """Drive UpstreamHandshake over a real socket, as the synchronous gateway will."""
    sock = connect(port)
    upstream = UpstreamHandshake(password)
    try:
        while not upstream.done:
            data = sock.recv(4096)
            if not data:
                raise EOFError("QEMU closed the connection")
            reply = upstream.receive(data)
            if reply:
                sock.sendall(reply)
    except BaseException:
        sock.close()
        raise
    return sock, upstream


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def is_closed(sock: socket.socket) -> bool:
    """True if the peer closed the connection (EOF or reset) within the timeout."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_serves_frames(sock: socket.socket) -> None:
    """A non-incremental FramebufferUpdateRequest is answered with a FramebufferUpdate."""
    sock.sendall(b"\x03\x00" + bytes(4) + b"\x00\x10\x00\x10")
    assert recv_exactly(sock, 1) == b"\x00"


def test_right_password_gives_server_init(qemu_vnc: QemuVnc) -> None:
    sock, upstream = handshake(qemu_vnc.port, PASSWORD)
    with sock:
        assert upstream.version == (3, 8)
        assert upstream.security_type == 2
        init = ServerInit.parse(upstream.server_init)
        assert (init.width, init.height) in {(640, 480), (720, 400)}
        assert init.desktop_name == "QEMU (rfbtest)"
        assert upstream.leftover == b""
        assert_serves_frames(sock)


def test_wrong_password_is_refused(qemu_vnc: QemuVnc) -> None:
    with pytest.raises(RfbProtocolError, match="VNC authentication failed: Authentication"):
        handshake(qemu_vnc.port, "wrong!")
    # QEMU has no lock-out: the right password still works straight afterwards.
    sock, _ = handshake(qemu_vnc.port, PASSWORD)
    sock.close()


def test_client_without_password_is_refused(qemu_vnc: QemuVnc) -> None:
    """A client that offers no authentication (chooses type 1, None) is turned away."""
    with connect(qemu_vnc.port) as sock:
        assert recv_exactly(sock, 12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        count = recv_exactly(sock, 1)[0]
        assert recv_exactly(sock, count) == b"\x02"  # only VNC Authentication is offered
        sock.sendall(b"\x01")
        assert recv_exactly(sock, 4) == b"\x00\x00\x00\x01"  # SecurityResult: failed
        length = int.from_bytes(recv_exactly(sock, 4), "big")
        assert recv_exactly(sock, length).rstrip(b"\0") == b"Authentication failed"
        assert is_closed(sock)


def test_only_first_eight_password_bytes_count(qemu_vnc: QemuVnc) -> None:
    qemu_vnc.qmp.execute("change-vnc-password", password="abcdefgh-tail")
    try:
        for attempt in ("abcdefgh", "abcdefgh-other"):
            sock, _ = handshake(qemu_vnc.port, attempt)
            sock.close()
        with pytest.raises(RfbProtocolError, match="authentication failed"):
            handshake(qemu_vnc.port, "abcdefg")
    finally:
        qemu_vnc.qmp.execute("change-vnc-password", password=PASSWORD)


def exclusive_client(port: int) -> socket.socket:
    """A plain RFB 3.8 client that authenticates and asks for an exclusive session."""
    sock = connect(port)
    recv_exactly(sock, 12)
    sock.sendall(b"RFB 003.008\n")
    recv_exactly(sock, recv_exactly(sock, 1)[0])
    sock.sendall(b"\x02")
    sock.sendall(vnc_auth_response(PASSWORD, recv_exactly(sock, 16)))
    assert recv_exactly(sock, 4) == bytes(4)
    sock.sendall(b"\x00")  # ClientInit, shared-flag 0
    recv_exactly(sock, 24)
    return sock


def wait_for_clients(qmp: Qmp, count: int) -> None:
    """Wait until QEMU lists ``count`` VNC clients (it notices closed sockets a bit later)."""
    deadline = time.monotonic() + TIMEOUT
    while len(qmp.execute("query-vnc")["clients"]) != count:
        assert time.monotonic() < deadline, "QEMU's VNC client list did not settle"
        time.sleep(0.02)


def test_shared_flag_keeps_other_viewers(qemu_vnc: QemuVnc) -> None:
    wait_for_clients(qemu_vnc.qmp, 0)
    first, _ = handshake(qemu_vnc.port, PASSWORD)
    second, _ = handshake(qemu_vnc.port, PASSWORD)
    with first, second:
        wait_for_clients(qemu_vnc.qmp, 2)
        assert_serves_frames(first)
        assert_serves_frames(second)
        # Why shared-flag 1 matters: with QEMU's default share policy (allow-exclusive), a
        # client asking for exclusive access disconnects everybody else ...
        first.settimeout(2)
        second.settimeout(2)
        with exclusive_client(qemu_vnc.port):
            assert is_closed(first)
            assert is_closed(second)
            # ... and, while it is connected, shared clients are dropped after ClientInit.
            with pytest.raises((EOFError, ConnectionResetError)):
                handshake(qemu_vnc.port, PASSWORD)
    wait_for_clients(qemu_vnc.qmp, 0)
    sock, _ = handshake(qemu_vnc.port, PASSWORD)
    sock.close()


def test_password_expiry(qemu_vnc: QemuVnc) -> None:
    viewer, _ = handshake(qemu_vnc.port, PASSWORD)
    with viewer:
        qemu_vnc.qmp.execute("expire_password", protocol="vnc", time="now")
        try:
            with pytest.raises(RfbProtocolError, match="authentication failed"):
                handshake(qemu_vnc.port, PASSWORD)
            # Changing the password does not lift the expiry ...
            qemu_vnc.qmp.execute("change-vnc-password", password=PASSWORD)
            with pytest.raises(RfbProtocolError, match="authentication failed"):
                handshake(qemu_vnc.port, PASSWORD)
            # ... and an open session survives both.
            assert_serves_frames(viewer)
        finally:
            qemu_vnc.qmp.execute("expire_password", protocol="vnc", time="never")
    sock, _ = handshake(qemu_vnc.port, PASSWORD)
    sock.close()
