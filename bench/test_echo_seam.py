"""The bench's echo backend is served through the hypervisor registry, in-process only
(libvirt's test driver reads the node file; nothing is connected to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.echo_seam import (
    ECHO_DOMAIN,
    PASSWORD_ENV,
    EchoDisplayHypervisor,
    install,
    write_echo_node,
)
from vms.hypervisor import GraphicsType, HypervisorError, get_hypervisor, registry


def test_echo_uris_are_served_once_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.registered_schemes()  # built-ins loaded before the registry is copied
    monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    monkeypatch.setattr(registry, "_instances", dict(registry._instances))
    uri = write_echo_node(tmp_path / "echo-node.xml", port=5999)
    assert uri.startswith("echo:///")

    with pytest.raises(HypervisorError, match="no hypervisor backend serves 'echo' URIs"):
        get_hypervisor(uri)  # a process without the seam (production) refuses the host

    password_file = tmp_path / "echo-password"
    monkeypatch.setenv(PASSWORD_ENV, str(password_file))
    install()
    install()  # idempotent: the same backend registered again
    hv = get_hypervisor(uri)
    assert isinstance(hv, EchoDisplayHypervisor)
    assert hv.uri == f"test://{tmp_path / 'echo-node.xml'}"

    endpoint = hv.console_endpoint(name=ECHO_DOMAIN)  # answered by libvirt from the node
    assert (endpoint.type, endpoint.host, endpoint.port) == (GraphicsType.vnc, "127.0.0.1", 5999)
    hv.set_console_password(name=ECHO_DOMAIN, password="abcdefghij", valid_for_s=30)  # noqa: S106
    assert password_file.read_text() == "abcdefgh"
