"""The bench-only backend that points a desktop's console at the VNC-like echo server.

Both relays reach a guest only through ``vms.services.consoles.console_arm``, which asks the
desktop's host (``hypervisor_for(host)`` -> ``get_hypervisor(host.uri)``) to set a one-off
password and to report where the display listens. The bench registers a host whose URI is
``echo:///.../echo-node.xml``: the ``echo`` scheme is served by ``EchoDisplayHypervisor``,
registered through the hypervisor registry like any backend. It is libvirt's own test driver
loaded with a node description written by the bench (``test:///.../echo-node.xml``): one
running domain, ``dpb-echo``, whose live XML says its VNC display listens on
127.0.0.1:<echo server port>. ``console_endpoint`` is answered by libvirt itself from that
XML, unchanged.

The only substitution: libvirt's test driver has no ``virDomainUpdateDeviceFlags``, so
``set_console_password`` cannot go to libvirt. This backend hands the password to the echo
server instead (a file only root can read), and the echo server checks the relay's VNC
Authentication response against it, as QEMU would.

``install()`` runs inside the bench's own server processes (bench/echo_asgi.py,
bench/echo_gateway.py) before any request; production code is not modified, and a process
without ``install()`` refuses ``echo`` URIs like any unknown kind of host.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from vms.hypervisor import HypervisorError, PowerState, register_backend
from vms.hypervisor.libvirt_backend import LibvirtHypervisor

ECHO_DOMAIN = "dpb-echo"
SCHEME = "echo"
PASSWORD_ENV = "BENCH_ECHO_PASSWORD_FILE"  # noqa: S105 - a variable name


def write_echo_node(path: Path, *, port: int) -> str:
    """Write the test driver's node description; return the echo host's URI that loads it."""
    node = ET.Element("node")
    domain = ET.SubElement(node, "domain", type="test")
    ET.SubElement(domain, "name").text = ECHO_DOMAIN
    ET.SubElement(domain, "memory").text = "65536"
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(
        devices, "graphics", type="vnc", port=str(port), autoport="no", listen="127.0.0.1"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ET.tostring(node, encoding="unicode"))
    return f"{SCHEME}://{path.resolve()}"


class EchoDisplayHypervisor(LibvirtHypervisor):
    """libvirt's test driver, except that console passwords go to the echo server.

    ``echo:///path/node.xml`` talks to libvirt at ``test:///path/node.xml``.
    """

    def __init__(self, uri: str, password_file: Path) -> None:
        super().__init__(f"test://{urlsplit(uri).path}")
        self.password_file = password_file

    def set_console_password(self, *, name: str, password: str, valid_for_s: int) -> None:
        if not password or valid_for_s <= 0:
            raise HypervisorError("invalid console password request", permanent=True)
        if self.state(name=name) is not PowerState.running:
            raise HypervisorError(f"desktop domain '{name}' is not running", permanent=True)
        tmp = self.password_file.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password[:8])
        tmp.replace(self.password_file)


def _echo_backend(uri: str) -> EchoDisplayHypervisor:
    return EchoDisplayHypervisor(uri, Path(os.environ[PASSWORD_ENV]))


def install() -> None:
    """Serve ``echo`` URIs in this process (no-op without the password file's env)."""
    if os.environ.get(PASSWORD_ENV):
        register_backend((SCHEME,), _echo_backend)
