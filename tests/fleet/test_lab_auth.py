"""A lab host's libvirtd lets in only the portal's TLS client certificate (scripts/lab-host).

Whoever reaches a lab host's address (a desktop on another lab host or on the machine's NAT
network could) gets nothing from its libvirtd without that certificate: no plain TCP
listener, no answer over TLS without a client certificate, with one of another CA, or with
another lab host's server certificate. The portal's connection (the host's URI) works.
"""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt
import pytest

from tests.fleet.conftest import lab_dir

pytestmark = pytest.mark.libvirt

TLS_PORT, TCP_PORT = 16514, 16509
# libvirt's RPC: program REMOTE_PROGRAM, version 1, procedure REMOTE_PROC_AUTH_LIST (66),
# a call (type 0) with serial 1 and status OK. Any libvirtd answers it before the
# connection is opened, so an answer means "this client got in".
REMOTE_PROGRAM, AUTH_LIST = 0x20008086, 66
AUTH_LIST_CALL = struct.pack(">7I", 28, REMOTE_PROGRAM, 1, AUTH_LIST, 0, 1, 0)


def _answer(sock: socket.socket) -> bytes:
    """The header of libvirtd's reply to an AUTH_LIST call on `sock` (its first 28 bytes);
    shorter when it closes instead."""
    reply = b""
    try:
        sock.sendall(AUTH_LIST_CALL)
        while len(reply) < 28:
            chunk = sock.recv(28 - len(reply))
            if not chunk:
                break
            reply += chunk
    except (ConnectionResetError, BrokenPipeError):
        return reply  # refused: what came before the reset is the answer
    return reply


def _tls_answer(address: str, *, ca: Path, cert: tuple[Path, Path] | None) -> bytes:
    """The answer to AUTH_LIST over TLS (the server checked against `ca`), as a client with
    `cert` (certificate, key) or none. Empty, or the TLS error's name, when refused."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection((address, TLS_PORT), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=address) as tls:
                # libvirtd confirms a client it has checked with one byte, 1, before any RPC.
                confirmation = tls.recv(1)
                return _answer(tls) if confirmation == b"\x01" else confirmation
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
            return type(exc).__name__.encode()


def _is_auth_list_reply(answer: bytes) -> bool:
    if len(answer) != 28:
        return False
    _length, program, _, procedure, kind, serial, status = struct.unpack(">7I", answer)
    return (program, procedure, kind, serial, status) == (REMOTE_PROGRAM, AUTH_LIST, 1, 1, 0)


def _rogue_client(directory: Path) -> tuple[Path, Path]:
    """A client certificate with the portal's own name, from a CA of its own (as anyone
    can make one)."""
    key, cert = directory / "rogue-key.pem", directory / "rogue-cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-keyout", str(key), "-out", str(cert),
         "-subj", "/O=desktop-portal lab/CN=desktop-portal lab client"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_a_lab_hosts_libvirtd_answers_only_the_portals_certificate(
    lab_hosts: Callable[[str], str], tmp_path: Path
) -> None:
    uri = lab_hosts("laba")
    lab_hosts("labb")
    parts = urlsplit(uri)
    address = parts.hostname or ""
    assert parts.scheme == "qemu+tls", uri
    pki = Path(parse_qs(parts.query)["pkipath"][0])
    ca = pki / "cacert.pem"
    portal_cert = (pki / "clientcert.pem", pki / "clientkey.pem")

    # The portal's connection, as the workers open it.
    conn = libvirt.open(uri)
    try:
        assert conn.getHostname()
    finally:
        conn.close()
    # The same call that the refused clients make below is answered for the portal.
    assert _is_auth_list_reply(_tls_answer(address, ca=ca, cert=portal_cert))

    # No plain TCP listener: neither libvirt's qemu+tcp nor a raw socket gets in.
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(f"qemu+tcp://{address}/system")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, TCP_PORT), timeout=10).close()
    # The TLS port does not speak RPC in the clear.
    with socket.create_connection((address, TLS_PORT), timeout=10) as raw:
        assert not _is_auth_list_reply(_answer(raw))

    # TLS without a client certificate, with one of another CA, and with another lab host's
    # own (server) certificate of the lab CA: no answer.
    other_tls = lab_dir("labb") / "etc" / "pki"
    for cert in (
        None,
        _rogue_client(tmp_path),
        (other_tls / "servercert.pem", other_tls / "serverkey.pem"),
    ):
        answer = _tls_answer(address, ca=ca, cert=cert)
        assert not _is_auth_list_reply(answer), (cert, answer)
