"""The libvirt backend against the real libvirtd (``qemu:///system``) and real QEMU guests.

Everything is created in the dedicated pool ``portal-test`` under a per-run name prefix and
removed by the fixtures, also when a test fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time

import pytest

from vms.hypervisor import (
    DomainSpec,
    GraphicsType,
    Hypervisor,
    HypervisorError,
    PowerState,
    domain_name,
    volume_name,
)
from vms.hypervisor.kvmprobe import cpu_has_virtualization, run_kvm_probe
from vms.hypervisor.libvirt_backend import LibvirtHypervisor

from .support import (
    DEMO_GUEST_IMAGE,
    RFB_BANNER,
    SEC_VNC_AUTH,
    SYSTEM_POOL,
    SYSTEM_POOL_PATH,
    RfbSession,
    wait_for_banner,
)

pytestmark = pytest.mark.libvirt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def qemu_img_info(path: str) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True
    )
    info: dict[str, object] = json.loads(out.stdout)
    return info


def desktop_spec(name: str, disk: str, *, virt_type: str = "qemu") -> DomainSpec:
    return DomainSpec(
        name=name,
        vcpus=1,
        memory_mib=128,
        disk_path=disk,
        graphics=GraphicsType.vnc,
        virt_type=virt_type,  # type: ignore[arg-type]
        title="Test desktop <&> ü",
        description="made by tests/hypervisor",
        desktop_id=name,
        console_password="initpw1",
    )


def test_linked_clone_over_qemu_img_base(
    system_hv: Hypervisor, system_names: str, blank_base: str
) -> None:
    name = volume_name(system_names, "1")
    started = time.perf_counter()
    vol = system_hv.clone_volume(
        pool=SYSTEM_POOL, name=name, base_path=blank_base, capacity_bytes=2**30
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\nlinked clone took {elapsed_ms:.1f} ms")
    assert vol.path == os.path.join(SYSTEM_POOL_PATH, name)
    assert vol.backing_path == blank_base
    assert vol.format == "qcow2"
    assert vol.capacity_bytes == 2**30
    assert vol.allocation_bytes < 1024 * 1024  # an overlay, not a copy

    info = qemu_img_info(vol.path)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == blank_base
    assert info.get("backing-filename-format") == "qcow2"
    assert info["format-specific"]["data"]["compat"] == "1.1"  # type: ignore[index]
    assert info["virtual-size"] == 2**30
    assert elapsed_ms < 2000

    again = system_hv.clone_volume(
        pool=SYSTEM_POOL, name=name, base_path=blank_base, capacity_bytes=2**30
    )
    assert again.path == vol.path and again.backing_path == blank_base
    assert [v.name for v in system_hv.list_volumes(pool=SYSTEM_POOL, prefix=name)] == [name]


def test_clone_of_missing_base_is_permanent(system_hv: Hypervisor, system_names: str) -> None:
    missing = os.path.join(SYSTEM_POOL_PATH, f"{system_names}no-such-base.qcow2")
    with pytest.raises(HypervisorError) as exc:
        system_hv.clone_volume(
            pool=SYSTEM_POOL, name=f"{system_names}x.qcow2", base_path=missing, capacity_bytes=1
        )
    assert exc.value.permanent is True
    assert exc.value.message == f"base image {missing} is missing"
    assert system_hv.list_volumes(pool=SYSTEM_POOL, prefix=system_names) == []


def test_import_base_volume_uploads_over_a_stream(
    system_hv: Hypervisor, system_names: str, tmp_path: object
) -> None:
    source = os.path.join(str(tmp_path), "src.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", source, "200M"], check=True)
    name = f"{system_names}imported.qcow2"
    vol = system_hv.import_base_volume(pool=SYSTEM_POOL, name=name, source_path=source)
    assert vol.format == "qcow2"
    assert vol.capacity_bytes == 200 * 2**20
    with open(source, "rb") as a, open(vol.path, "rb") as b:
        assert a.read() == b.read()
    assert system_hv.import_base_volume(pool=SYSTEM_POOL, name=name, source_path=source) == vol

    with pytest.raises(HypervisorError, match="is missing") as exc:
        system_hv.import_base_volume(
            pool=SYSTEM_POOL, name=f"{system_names}y.qcow2", source_path="/nonexistent.qcow2"
        )
    assert exc.value.permanent


def test_kvm_detection_is_a_cached_bool(system_hv: Hypervisor) -> None:
    first = system_hv.kvm_available()
    started = time.perf_counter()
    assert system_hv.kvm_available() is first
    assert time.perf_counter() - started < 0.01
    print(f"\nkvm_available() on {system_hv.uri}: {first}")


def test_boot_console_and_teardown(
    system_hv: Hypervisor, system_names: str, blank_base: str
) -> None:
    """A blank disk: SeaBIOS runs ('No bootable device') and QEMU serves VNC."""
    hv = system_hv
    name = domain_name(system_names, "boot")
    vol = hv.clone_volume(
        pool=SYSTEM_POOL,
        name=volume_name(system_names, "boot"),
        base_path=blank_base,
        capacity_bytes=64 * 2**20,
    )
    info = hv.define_domain(desktop_spec(name, vol.path))
    assert info.state is PowerState.shutoff and info.desktop_id == name

    started = time.perf_counter()
    hv.start(name=name)
    endpoint = hv.console_endpoint(name=name)
    assert endpoint.type is GraphicsType.vnc
    assert endpoint.host == "127.0.0.1"
    assert 5900 <= endpoint.port < 65536
    assert wait_for_banner(endpoint.host, endpoint.port) == RFB_BANNER
    print(f"\nstart to RFB banner: {time.perf_counter() - started:.2f} s")
    assert hv.state(name=name) is PowerState.running
    hv.start(name=name)  # idempotent

    # The definition's password works; a per-session password replaces it.
    session = RfbSession(endpoint.host, endpoint.port)
    assert session.security_types == [SEC_VNC_AUTH]
    assert session.authenticate("initpw1")
    session.close()

    hv.set_console_password(name=name, password="sess-pw1", valid_for_s=60)
    session = RfbSession(endpoint.host, endpoint.port)
    assert session.security_types == [SEC_VNC_AUTH]
    assert not session.authenticate("initpw1")
    session.close()

    # Several viewers at once (sharePolicy=force-shared): an exclusive request is refused
    # instead of disconnecting the others.
    viewers = []
    for _ in range(2):
        viewer = RfbSession(endpoint.host, endpoint.port)
        assert viewer.authenticate("sess-pw1")
        assert viewer.client_init(shared=True)[0] > 0
        viewers.append(viewer)
    greedy = RfbSession(endpoint.host, endpoint.port)
    assert greedy.authenticate("sess-pw1")
    with pytest.raises(ConnectionError):
        greedy.client_init(shared=False)
    greedy.close()
    assert all(v.is_open() for v in viewers)
    for viewer in viewers:
        viewer.close()

    png = hv.screenshot(name=name)
    assert png.startswith(PNG_MAGIC)

    # An expired password no longer opens the console.
    hv.set_console_password(name=name, password="short-pw", valid_for_s=1)
    time.sleep(2.1)
    session = RfbSession(endpoint.host, endpoint.port)
    assert not session.authenticate("short-pw")
    session.close()

    # No guest OS answers ACPI: shutdown forces it off once the timeout has passed.
    started = time.perf_counter()
    hv.shutdown(name=name, timeout_s=1.0)
    assert 0.9 <= time.perf_counter() - started < 10
    assert hv.state(name=name) is PowerState.shutoff
    with pytest.raises(HypervisorError, match="not running"):
        hv.console_endpoint(name=name)

    hv.undefine(name=name)
    hv.delete_volume(pool=SYSTEM_POOL, name=vol.name)
    assert hv.list_domains(prefix=name) == []
    assert hv.list_volumes(pool=SYSTEM_POOL, prefix=vol.name) == []


def test_demo_guest_boots_and_powers_off_gracefully(
    system_hv: Hypervisor, system_names: str
) -> None:
    if not os.path.isfile(DEMO_GUEST_IMAGE):
        pytest.fail(
            f"demo guest image {DEMO_GUEST_IMAGE} is missing: build it with "
            f"scripts/build-guest-image.sh {DEMO_GUEST_IMAGE} (or set DEMO_GUEST_IMAGE)"
        )
    hv = system_hv
    base = hv.import_base_volume(
        pool=SYSTEM_POOL, name=f"{system_names}demo-base.qcow2", source_path=DEMO_GUEST_IMAGE
    )
    assert base.format == "qcow2"
    vol = hv.clone_volume(
        pool=SYSTEM_POOL,
        name=volume_name(system_names, "demo"),
        base_path=base.path,
        capacity_bytes=base.capacity_bytes,
    )
    name = domain_name(system_names, "demo")
    virt_type = "kvm" if hv.kvm_available() else "qemu"
    hv.define_domain(desktop_spec(name, vol.path, virt_type=virt_type))

    started = time.perf_counter()
    hv.start(name=name)
    endpoint = hv.console_endpoint(name=name)
    assert wait_for_banner(endpoint.host, endpoint.port) == RFB_BANNER
    # The power button only works once the guest's acpid runs, so a graceful power-off
    # (before the timeout) shows the guest really booted.
    timeout_s = 40.0
    hv.shutdown(name=name, timeout_s=timeout_s)
    elapsed = time.perf_counter() - started
    print(f"\n{virt_type}: start to graceful ACPI power-off: {elapsed:.1f} s")
    assert hv.state(name=name) is PowerState.shutoff
    assert elapsed < timeout_s, "the guest ignored the ACPI power button (did it boot?)"

    hv.undefine(name=name)
    for v in (vol.name, base.name):
        hv.delete_volume(pool=SYSTEM_POOL, name=v)
    assert hv.list_domains(prefix=system_names) == []
    assert hv.list_volumes(pool=SYSTEM_POOL, prefix=system_names) == []


def test_kvm_probe_firmware_runs_under_tcg() -> None:
    """The probe's firmware is correct: plain TCG runs it to the exit port (status 99)."""
    started = time.perf_counter()
    assert run_kvm_probe(accel="tcg", check_cpu_flags=False) is True
    assert time.perf_counter() - started < 5


def test_no_kvm_without_cpu_virtualization_flags(system_hv: Hypervisor) -> None:
    if cpu_has_virtualization() is False:  # e.g. kvm-pvm: /dev/kvm exists but is not enough
        assert system_hv.kvm_available() is False


def test_full_copy_has_no_backing_file(
    system_hv: Hypervisor, system_names: str, blank_base: str
) -> None:
    assert isinstance(system_hv, LibvirtHypervisor)  # full copies are only the bench's
    name = f"{system_names}copy.qcow2"
    vol = system_hv.full_copy_volume(pool=SYSTEM_POOL, name=name, base_path=blank_base)
    assert vol.backing_path is None
    assert vol.capacity_bytes == 64 * 2**20
    info = qemu_img_info(vol.path)
    assert info["format"] == "qcow2" and "backing-filename" not in info


def test_spice_console_and_password(
    system_hv: Hypervisor, system_names: str, blank_base: str
) -> None:
    hv = system_hv
    name = domain_name(system_names, "spice")
    vol = hv.clone_volume(
        pool=SYSTEM_POOL,
        name=volume_name(system_names, "spice"),
        base_path=blank_base,
        capacity_bytes=64 * 2**20,
    )
    spec = desktop_spec(name, vol.path)
    hv.define_domain(dataclasses.replace(spec, graphics=GraphicsType.spice))
    hv.start(name=name)
    endpoint = hv.console_endpoint(name=name)
    assert endpoint.type is GraphicsType.spice
    assert endpoint.host == "127.0.0.1" and endpoint.port >= 5900
    # A TLS port exactly where qemu.conf turns SPICE TLS on (set-up does: SPICE_TLS_DIR).
    with open("/etc/libvirt/qemu.conf") as conf:
        spice_tls = any(line.strip() == "spice_tls = 1" for line in conf)
    assert (endpoint.tls_port is not None) == spice_tls, endpoint
    with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
        sock.sendall(b"")  # QEMU accepts the connection (SPICE speaks after the client)
    hv.set_console_password(name=name, password="spice-pw", valid_for_s=30)
    hv.destroy(name=name)
    assert hv.state(name=name) is PowerState.shutoff
