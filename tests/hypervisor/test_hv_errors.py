"""Mapping of libvirt errors to HypervisorError (permanent vs transient)."""

from __future__ import annotations

import libvirt
import pytest

from vms.hypervisor import HypervisorError
from vms.hypervisor.libvirt_backend import LibvirtHypervisor
from vms.hypervisor.libvirt_errors import from_libvirt_error, is_connection_lost


def fake_error(code: int, message: str) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, libvirt.VIR_FROM_QEMU, message, 2, None, None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (libvirt.VIR_ERR_NO_CONNECT, "no connection"),
        (libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot recv data: Connection reset by peer"),
        (libvirt.VIR_ERR_RPC, "RPC failed"),
        (
            libvirt.VIR_ERR_OPERATION_TIMEOUT,
            "Timed out during operation: cannot acquire state change lock",
        ),
        (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent is not responding"),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: client socket is closed"),
    ],
)
def test_transient_errors(code: int, message: str) -> None:
    mapped = from_libvirt_error(fake_error(code, message), "starting desktop 'd'")
    assert isinstance(mapped, HypervisorError)
    assert mapped.permanent is False
    assert mapped.message.startswith("starting desktop 'd' failed: ")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found"),
        (libvirt.VIR_ERR_XML_ERROR, "XML error"),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: process exited while connecting"),
        (libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running"),
        (libvirt.VIR_ERR_SYSTEM_ERROR, "cannot create file: No space left on device"),
        (libvirt.VIR_ERR_SYSTEM_ERROR, "cannot open '/x': Permission denied"),
    ],
)
def test_permanent_errors(code: int, message: str) -> None:
    assert from_libvirt_error(fake_error(code, message), "x").permanent is True


def test_passwords_are_scrubbed() -> None:
    err = fake_error(libvirt.VIR_ERR_XML_ERROR, "bad attribute passwd='hunter22'")
    mapped = from_libvirt_error(err, "setting password", secrets=("hunter22",))
    assert "hunter22" not in mapped.message
    assert "***" in mapped.message


def test_connection_lost_detection() -> None:
    assert is_connection_lost(fake_error(libvirt.VIR_ERR_INTERNAL_ERROR, "client socket is closed"))
    assert is_connection_lost(fake_error(libvirt.VIR_ERR_INVALID_CONN, "invalid connection"))
    assert not is_connection_lost(fake_error(libvirt.VIR_ERR_INTERNAL_ERROR, "qemu died"))
    assert not is_connection_lost(fake_error(libvirt.VIR_ERR_NO_DOMAIN, "no domain"))


def test_unreachable_daemon_is_transient() -> None:
    hv = LibvirtHypervisor("qemu+tcp://127.0.0.1:1/system")  # nothing listens on port 1
    with pytest.raises(HypervisorError) as exc:
        hv.list_domains(prefix="x")
    assert exc.value.permanent is False
    assert "qemu+tcp://127.0.0.1:1/system" in exc.value.message


def test_error_without_details_is_transient() -> None:
    err = libvirt.libvirtError("virDomainCreate() failed")
    err.err = None
    assert from_libvirt_error(err, "starting").permanent is False


def test_a_kernel_that_cannot_shape_says_what_to_do() -> None:
    # libvirt's own words on this CI machine's kernel (no sch_sfq, no act_police).
    for text in (
        "internal error: Child process (tc qdisc add dev vnet0 parent 1:1 handle 2: sfq "
        "perturb 10) unexpected exit status 2: Error: Specified qdisc kind is unknown.",
        "internal error: Child process (tc filter add dev vnet1 parent ffff: protocol all "
        "u32 match u32 0 0 police rate 500kbps burst 50kb mtu 64kb drop flowid :1) "
        "unexpected exit status 2: Error: Failed to load TC action module.",
    ):
        mapped = from_libvirt_error(fake_error(libvirt.VIR_ERR_INTERNAL_ERROR, text), "x")
        assert mapped.permanent and "remove the template's limit" in mapped.message
