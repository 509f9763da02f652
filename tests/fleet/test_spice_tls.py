"""SPICE over TLS end to end, and files that name no host: a real remote-viewer under Xvfb
opens a .vv file for a desktop on a lab host (whose QEMU has a TLS port with the portal
CA's certificate, scripts/setup.sh) and shows the guest through the SPICE proxy. A packet
capture on this machine's interfaces shows every SPICE byte on both legs inside TLS."""

from __future__ import annotations

import datetime as dt
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.browser.conftest import wait_for_boot
from tests.relay.test_spice_proxy import (
    ask,
    connect_request,
    download_vv,
    screenshot,
    spice_desktop,
    stopped_at_end,
    token_of,
    vv_fields,
    wait_until,
    xvfb,
)
from tests.servers import ROOT, free_port, running, var_path
from vms.hypervisor import get_hypervisor
from vms.models import AuditEvent, ConsoleSession, Desktop, Host
from vms.selectors import SPICE_SET_OPEN_ACTION

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
TLS_DIR = Path(os.environ.get("SPICE_TLS_DIR") or "/etc/desktop-portal/spice-tls")
PROXY_LOG = var_path("test-spiceproxy-tls.log")
SPICE_MAGIC = b"REDQ"  # the first bytes of every plain SPICE link, both ways
TLS_HANDSHAKE = b"\x16\x03"  # a TLS record carrying a handshake (a ClientHello first)


@pytest.fixture
def tls_proxy(settings: Any) -> Iterator[int]:
    """`manage.py spiceproxy` with the portal's SPICE CA (made by scripts/setup.sh)."""
    assert (TLS_DIR / "ca-cert.pem").is_file(), f"no SPICE CA in {TLS_DIR}: run scripts/setup.sh"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "manage.py", "spiceproxy", "--listen", f"127.0.0.1:{port}"]
    with running(
        command,
        port=port,
        log_name="test-spiceproxy-tls.log",
        LOG_LEVEL="INFO",
        CONSOLE_RECHECK_S="1",
        SPICE_TLS_DIR=str(TLS_DIR),
        SPICE_PROXY_URL=url,
    ):
        settings.SPICE_TLS_DIR, settings.SPICE_PROXY_URL = str(TLS_DIR), url
        yield port


# --- a packet capture (AF_PACKET: every interface of this namespace, as tcpdump -i any) -----


@dataclass
class Capture:
    """TCP payloads to or from the watched (address, port) pairs, until the block ends."""

    watched: set[tuple[str, int]]
    payloads: dict[tuple[str, int], list[bytes]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003)) as sock:
            sock.settimeout(0.2)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)  # a screen's worth
            self.ready.set()
            while not self.stop.is_set():
                try:
                    packet = sock.recv(65536)
                except TimeoutError:
                    continue
                self._take(packet)

    def _take(self, packet: bytes) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
            return
        ip_header = (packet[0] & 0x0F) * 4
        source, destination = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        sport, dport = struct.unpack_from("!HH", packet, ip_header)
        payload = packet[ip_header + (packet[ip_header + 12] >> 4) * 4 :]
        for end in ((source, sport), (destination, dport)):
            if end in self.watched and payload:
                self.payloads.setdefault(end, []).append(payload)

    ready: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def capture() -> Iterator[Capture]:
    taken = Capture(watched=set())
    thread = threading.Thread(target=taken.run, daemon=True)
    thread.start()
    assert taken.ready.wait(10)
    try:
        yield taken
    finally:
        taken.stop.set()
        thread.join(10)


def other_ca_pem() -> str:
    """A CA that is not the portal's (what a man in the middle would sign with)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone else's CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def kept_screenshot(display: str) -> bytes:
    """A screenshot, also kept as var/remote-viewer-tls.png (the last one shows a failure)."""
    png = screenshot(display)
    (ROOT / "var" / "remote-viewer-tls.png").write_bytes(png)
    return png


def run_viewer(vv: str, tmp_path: Path, name: str, display: str) -> subprocess.Popen[bytes]:
    (tmp_path / name).write_text(vv)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    return subprocess.Popen(
        ["remote-viewer", f"--display={display}", str(tmp_path / name)],
        env=env,
        stdout=open(ROOT / "var" / f"test-remote-viewer-{name}.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def test_remote_viewer_speaks_tls_to_the_proxy_and_the_proxy_to_qemu_and_files_name_no_host(
    tls_proxy,
    capture,
    lab_host_in_portal,
    local_host,
    api_for,
    employee,
    helpdesk_user,
    demo_template,
    tmp_path,
) -> None:
    Host.objects.filter(pk=local_host.pk).update(enabled=False)  # the desktop goes to laba
    desktop: Desktop = spice_desktop(api_for(employee), demo_template)
    assert desktop.host == lab_host_in_portal
    endpoint = get_hypervisor(lab_host_in_portal.uri).console_endpoint(name=desktop.domain_name)
    assert endpoint.tls_port, "the lab host's QEMU has no SPICE TLS port (qemu.conf spice_tls)"
    lab_address = lab_host_in_portal.console_address
    capture.watched |= {
        ("127.0.0.1", tls_proxy),
        (endpoint.host, endpoint.tls_port),
        (endpoint.host, endpoint.port),
    }

    # Neither the file nor the API shows an employee the host's address or name.
    vv = download_vv(employee, desktop)
    file = vv_fields(vv)
    for secret in (lab_address, lab_host_in_portal.name, str(endpoint.port)):
        assert secret not in vv, secret
    assert (file["host"], file["tls-port"], file["secure-channels"]) == ("127.0.0.1", "5901", "all")
    assert "port" not in file  # no plain port to fall back to
    assert file["ca"].replace("\\n", "\n") == (TLS_DIR / "ca-cert.pem").read_text().strip()
    assert file["host-subject"] == "O=Desktop Portal,CN=127.0.0.1"
    mine = api_for(employee).get(f"/api/desktops/{desktop.pk}/").json()
    assert "host" not in mine and lab_address not in str(mine)
    assert all("host" not in row for row in api_for(employee).get("/api/desktops/").json())
    theirs = api_for(helpdesk_user).get(f"/api/desktops/{desktop.pk}/").json()
    assert theirs["host"] == lab_host_in_portal.name  # help-desk may see the host's name

    # The plain port is not the file's: refused, and the file stays unused.
    status, answer = ask(tls_proxy, connect_request("127.0.0.1:5900", token_of(vv)))
    assert status == 403 and "does not name that address" in answer

    logged_before = len(PROXY_LOG.read_text())
    with xvfb() as display:
        with stopped_at_end(run_viewer(vv, tmp_path, "tls.vv", display)) as viewer:
            text = wait_for_boot(lambda: kept_screenshot(display))
            assert viewer.poll() is None, text
        session = ConsoleSession.objects.filter(desktop=desktop).latest("started_at")
        wait_until(lambda: ConsoleSession.objects.get(pk=session.pk).ended_at is not None)

        # A file whose CA is not the portal's: remote-viewer refuses the proxy's certificate.
        forged = download_vv(employee, desktop)
        forged_file = vv_fields(forged)
        forged = forged.replace(forged_file["ca"], other_ca_pem().strip().replace("\n", "\\n"))
        with stopped_at_end(run_viewer(forged, tmp_path, "other-ca.vv", display)):
            wait_until(
                lambda: "ALERT_UNKNOWN_CA" in PROXY_LOG.read_text()[logged_before:], timeout=60
            )

    log = PROXY_LOG.read_text()[logged_before:]
    linked = [line for line in log.splitlines() if f"session {session.pk}: channel" in line]
    assert len([line for line in linked if "linked" in line]) >= 3, log  # main, display, inputs...
    for line in linked:
        assert "remote-viewer over TLSv1." in line and "QEMU over TLSv1." in line, line
    opened = AuditEvent.objects.get(action=SPICE_SET_OPEN_ACTION, detail__session=session.pk)
    assert opened.detail["client_tls"] is True and opened.detail["guest_tls"] is True

    # The capture: no SPICE link in the clear on either leg, TLS handshakes on both, and not
    # one byte to QEMU's plain port.
    to_proxy = capture.payloads[("127.0.0.1", tls_proxy)]
    to_qemu = capture.payloads[(endpoint.host, endpoint.tls_port)]
    for payloads in (to_proxy, to_qemu):
        assert not [p for p in payloads if p.startswith(SPICE_MAGIC)]
        assert len([p for p in payloads if p.startswith(TLS_HANDSHAKE)]) >= 3
    assert (endpoint.host, endpoint.port) not in capture.payloads
    wait_until(lambda: not ConsoleSession.objects.filter(ended_at=None).exists(), timeout=30)
