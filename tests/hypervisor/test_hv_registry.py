"""The backend registry: a host's URI scheme picks its backend, without connecting anywhere.

Remote URIs below are only parsed: ``libvirt.open`` is replaced by a function that fails the
test, so selecting a backend provably sends no traffic (the ``.invalid`` names could not be
resolved anyway).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from vms.hypervisor import Hypervisor, HypervisorError, get_hypervisor, registry
from vms.hypervisor.libvirt_backend import LibvirtHypervisor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(uri: str) -> None:
        raise AssertionError(f"selecting a backend opened a connection to {uri}")

    monkeypatch.setattr(libvirt, "open", refuse)
    monkeypatch.setattr(libvirt, "openReadOnly", refuse)
    monkeypatch.setattr(libvirt, "openAuth", refuse)


@pytest.fixture
def private_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends registered by the test disappear after it."""
    registry.registered_schemes()  # the built-in backends are in the copy
    monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    monkeypatch.setattr(registry, "_instances", dict(registry._instances))


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+ssh://root@hv1.invalid/system",
        "qemu+tls://hv2.invalid/system?pkipath=/etc/portal/pki",
        "QEMU+TLS://hv3.invalid/system",
        "test:///default",
    ],
)
def test_libvirt_schemes_pick_the_libvirt_backend(uri: str, no_connecting: None) -> None:
    hv = get_hypervisor(uri)
    assert type(hv) is LibvirtHypervisor
    assert hv.uri == uri
    assert get_hypervisor(uri) is hv  # one object per URI and process


def test_the_scheme_before_the_transport_selects() -> None:
    assert registry.uri_scheme("qemu+ssh://root@hv1/system") == "qemu"
    assert registry.uri_scheme("Qemu+TLS://hv1/system") == "qemu"
    assert registry.uri_scheme("test:///default") == "test"
    assert registry.uri_scheme("esx://hv1/?no_verify=1") == "esx"
    assert registry.uri_scheme("/run/libvirt/libvirt-sock") == ""
    assert registry.uri_scheme("qemu+ssh://[::1/system") == ""  # unparsable


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("esx://root@esxi1.invalid/?no_verify=1", "esx"),
        ("xen:///system", "xen"),
        ("hyperv://hv1.invalid/?transport=http", "hyperv"),
        ("vbox:///session", "vbox"),
    ],
)
def test_unknown_scheme_is_a_permanent_error_a_person_can_act_on(
    uri: str, scheme: str, no_connecting: None
) -> None:
    with pytest.raises(HypervisorError) as exc:
        get_hypervisor(uri)
    assert exc.value.permanent is True
    message = exc.value.message
    assert f"no hypervisor backend serves '{scheme}' URIs" in message
    assert "this portal serves: qemu, test" in message
    assert "docs/hypervisors.md" in message
    assert "invalid" not in message  # the host's address is not repeated
    assert uri not in registry._instances


@pytest.mark.parametrize("uri", ["", "/run/libvirt/libvirt-sock", "hv1.invalid", "qemu+ssh://["])
def test_uri_without_a_scheme_is_a_permanent_error(uri: str) -> None:
    with pytest.raises(HypervisorError, match="has no scheme") as exc:
        get_hypervisor(uri)
    assert exc.value.permanent is True


def test_a_registered_backend_serves_its_scheme(private_registry: None) -> None:
    made: list[str] = []

    def factory(uri: str) -> Hypervisor:
        made.append(uri)
        return LibvirtHypervisor(f"test:///default?via={uri}")

    registry.register_backend(("lab",), factory)
    registry.register_backend(("lab",), factory)  # the same again: a no-op
    assert "lab" in registry.registered_schemes()
    hv = get_hypervisor("lab+ssh://hv1.invalid/system")
    assert get_hypervisor("lab+ssh://hv1.invalid/system") is hv
    assert made == ["lab+ssh://hv1.invalid/system"]


def test_a_backends_uri_check_runs_before_its_factory(private_registry: None) -> None:
    made: list[str] = []

    def factory(uri: str) -> Hypervisor:
        made.append(uri)
        return LibvirtHypervisor("test:///default")

    def only_system(uri: str) -> None:
        if not uri.endswith("/system"):
            raise HypervisorError("only /system", permanent=True)

    registry.register_backend(("lab",), factory, uri_check=only_system)
    with pytest.raises(HypervisorError, match="only /system"):
        get_hypervisor("lab+ssh://hv1.invalid/other")
    assert made == []
    get_hypervisor("lab+ssh://hv1.invalid/system")
    assert made == ["lab+ssh://hv1.invalid/system"]


@pytest.mark.parametrize("uri", ["qemu+ext:///system?command=/bin/true", "qemu+tcp://hv1/system"])
def test_the_libvirt_backend_refuses_undocumented_transports(uri: str, no_connecting: None) -> None:
    with pytest.raises(HypervisorError, match="is not allowed for a host") as exc:
        get_hypervisor(uri)
    assert exc.value.permanent is True
    assert uri not in registry._instances


def test_a_served_scheme_cannot_be_taken_over(private_registry: None) -> None:
    with pytest.raises(ValueError, match="'qemu' is already served by"):
        registry.register_backend(("qemu",), lambda uri: LibvirtHypervisor("test:///default"))
    assert get_hypervisor("qemu:///system").__class__ is LibvirtHypervisor


@pytest.mark.parametrize("schemes", ["qemu", ("qemu+ssh",), ("QEMU",), ("",)])
def test_malformed_schemes_are_refused(schemes: object, private_registry: None) -> None:
    with pytest.raises((TypeError, ValueError)):
        registry.register_backend(schemes, LibvirtHypervisor)  # type: ignore[arg-type]


def test_errors_and_types_do_not_import_libvirt() -> None:
    """Callers that only catch errors or build specs do not load libvirt (a fresh process)."""
    code = (
        "import sys\n"
        "import vms.hypervisor.errors, vms.hypervisor.types\n"
        "from vms.hypervisor import HypervisorError, DomainSpec, PowerState, get_hypervisor\n"
        "assert 'libvirt' not in sys.modules, 'libvirt was imported'\n"
        "get_hypervisor('test:///default')\n"
        "assert 'libvirt' in sys.modules, 'the first lookup loads the libvirt backend'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
