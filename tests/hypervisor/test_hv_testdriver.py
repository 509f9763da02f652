"""The libvirt backend against libvirt's in-process test driver (``test:///default``)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from vms.hypervisor import (
    DomainSpec,
    GraphicsType,
    Hypervisor,
    HypervisorError,
    PowerState,
    domain_name,
    get_hypervisor,
    volume_name,
)
from vms.hypervisor.libvirt_backend import LibvirtHypervisor

from .support import TEST_DRIVER_POOL, TEST_URI

ROOT = Path(__file__).resolve().parents[2]

POOL_DIR = "/default-pool"
NASTY_TITLE = 'Ann\'s <desk> & "co" — ünïcødé 😀'


def spec_for(
    name: str, *, desktop_id: str = "7", disk: str = "/default-pool/x.qcow2"
) -> DomainSpec:
    return DomainSpec(
        name=name,
        vcpus=1,
        memory_mib=128,
        disk_path=disk,
        graphics=GraphicsType.vnc,
        virt_type="qemu",
        title=NASTY_TITLE,
        description="multi\nline <description> & more",
        desktop_id=desktop_id,
        console_password="pw-123",
    )


def make_base(conn: libvirt.virConnect, name: str) -> str:
    """A 'base image' volume in the test driver's pool; returns its path."""
    pool = conn.storagePoolLookupByName(TEST_DRIVER_POOL)
    xml = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{2**30}</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    return str(pool.createXML(xml, 0).path())


def test_get_hypervisor_is_cached_per_uri() -> None:
    assert get_hypervisor(TEST_URI) is get_hypervisor(TEST_URI)
    assert get_hypervisor(TEST_URI) is not get_hypervisor("qemu:///session")  # never connects


def test_domain_lifecycle_is_idempotent(hv: Hypervisor, prefix: str) -> None:
    name = domain_name(prefix, "7")
    assert hv.state(name=name) is PowerState.missing

    info = hv.define_domain(spec_for(name))
    assert info.name == name
    assert info.desktop_id == "7"
    assert info.state is PowerState.shutoff
    assert hv.define_domain(spec_for(name)) == info  # same name: returned, not redefined

    hv.start(name=name)
    hv.start(name=name)  # already running: fine
    assert hv.state(name=name) is PowerState.running

    hv.destroy(name=name)
    hv.destroy(name=name)  # already off: fine
    assert hv.state(name=name) is PowerState.shutoff

    hv.start(name=name)
    hv.shutdown(name=name, timeout_s=2)
    assert hv.state(name=name) is PowerState.shutoff
    hv.shutdown(name=name, timeout_s=2)  # already off: fine

    hv.reboot(name=name)  # shut off: reboot starts it
    assert hv.state(name=name) is PowerState.running
    hv.reboot(name=name)
    assert hv.state(name=name) is PowerState.running

    hv.undefine(name=name)  # running: destroyed first
    assert hv.state(name=name) is PowerState.missing
    hv.undefine(name=name)  # missing: fine
    hv.destroy(name=name)
    hv.shutdown(name=name, timeout_s=1)


def test_title_and_description_round_trip_through_libvirt(
    hv: Hypervisor, prefix: str, test_driver_conn: libvirt.virConnect
) -> None:
    name = domain_name(prefix, "t")
    hv.define_domain(spec_for(name, desktop_id="t"))
    dom = test_driver_conn.lookupByName(name)
    assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None) == NASTY_TITLE
    assert (
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None)
        == "multi\nline <description> & more"
    )
    hv.undefine(name=name)


def test_define_refuses_name_of_another_desktop(hv: Hypervisor, prefix: str) -> None:
    name = domain_name(prefix, "1")
    hv.define_domain(spec_for(name, desktop_id="1"))
    with pytest.raises(HypervisorError) as exc:
        hv.define_domain(spec_for(name, desktop_id="2"))
    assert exc.value.permanent
    assert "already used by desktop 1" in exc.value.message
    hv.undefine(name=name)


def test_define_without_password_is_refused(hv: Hypervisor, prefix: str) -> None:
    spec = spec_for(domain_name(prefix, "1"))
    spec = dataclasses.replace(spec, console_password="")
    with pytest.raises(HypervisorError, match="console password") as exc:
        hv.define_domain(spec)
    assert exc.value.permanent


def test_operations_on_missing_domain(hv: Hypervisor, prefix: str) -> None:
    name = domain_name(prefix, "none")
    for call in (
        lambda: hv.start(name=name),
        lambda: hv.reboot(name=name),
        lambda: hv.console_endpoint(name=name),
        lambda: hv.screenshot(name=name),
        lambda: hv.set_console_password(name=name, password="x", valid_for_s=5),
    ):
        with pytest.raises(HypervisorError, match="does not exist") as exc:
            call()
        assert exc.value.permanent


def test_list_domains_filters_by_prefix(hv: Hypervisor, prefix: str) -> None:
    names = [domain_name(prefix, str(i)) for i in range(3)]
    for i, name in enumerate(names):
        hv.define_domain(spec_for(name, desktop_id=str(i)))
    other = domain_name("zz" + prefix, "0")
    hv.define_domain(spec_for(other, desktop_id="0"))
    try:
        listed = hv.list_domains(prefix=prefix)
        assert [d.name for d in listed] == sorted(names)
        assert [d.desktop_id for d in listed] == ["0", "1", "2"]
        assert all(d.state is PowerState.shutoff and len(d.uuid) == 36 for d in listed)
        # Domains defined outside the portal have no desktop id.
        assert (
            next(d for d in hv.list_domains(prefix="test") if d.name == "test").desktop_id is None
        )
    finally:
        for name in [*names, other]:
            hv.undefine(name=name)
    assert hv.list_domains(prefix=prefix) == []


def test_screenshot_is_png(hv: Hypervisor, prefix: str) -> None:
    name = domain_name(prefix, "s")
    hv.define_domain(spec_for(name))
    hv.start(name=name)
    try:
        assert hv.screenshot(name=name).startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        hv.undefine(name=name)
    with pytest.raises(HypervisorError, match="does not exist"):
        hv.screenshot(name=name)


def test_clone_volume_is_overlay_and_idempotent(
    hv: Hypervisor, prefix: str, test_driver_conn: libvirt.virConnect
) -> None:
    base = make_base(test_driver_conn, f"{prefix}base.qcow2")
    name = volume_name(prefix, "9")
    vol = hv.clone_volume(pool=TEST_DRIVER_POOL, name=name, base_path=base, capacity_bytes=2**20)
    assert vol.name == name
    assert vol.path == f"{POOL_DIR}/{name}"
    assert vol.backing_path == base
    assert vol.format == "qcow2"
    assert vol.capacity_bytes == 2**30  # never smaller than the base
    again = hv.clone_volume(pool=TEST_DRIVER_POOL, name=name, base_path=base, capacity_bytes=2**20)
    assert again == vol

    other_base = make_base(test_driver_conn, f"{prefix}other.qcow2")
    with pytest.raises(HypervisorError, match="not a clone of") as exc:
        hv.clone_volume(pool=TEST_DRIVER_POOL, name=name, base_path=other_base, capacity_bytes=1)
    assert exc.value.permanent

    listed = hv.list_volumes(pool=TEST_DRIVER_POOL, prefix=prefix)
    assert {v.name for v in listed} == {name, f"{prefix}base.qcow2", f"{prefix}other.qcow2"}
    # The names alone (one libvirt call, no description of each): the same, sorted.
    assert hv.list_volume_names(pool=TEST_DRIVER_POOL, prefix=prefix) == [v.name for v in listed]
    assert hv.list_volumes(pool=TEST_DRIVER_POOL, prefix=volume_name(prefix, "9")) == [vol]

    for v in listed:
        hv.delete_volume(pool=TEST_DRIVER_POOL, name=v.name)
    hv.delete_volume(pool=TEST_DRIVER_POOL, name=name)  # missing: fine
    hv.delete_volume(pool="no-such-pool", name=name)  # missing pool: fine
    assert hv.list_volumes(pool=TEST_DRIVER_POOL, prefix=prefix) == []


def test_clone_of_missing_base_is_permanent(hv: Hypervisor, prefix: str) -> None:
    missing = f"{POOL_DIR}/{prefix}gone.qcow2"
    with pytest.raises(HypervisorError) as exc:
        hv.clone_volume(
            pool=TEST_DRIVER_POOL, name=f"{prefix}c.qcow2", base_path=missing, capacity_bytes=1
        )
    assert exc.value.permanent
    assert exc.value.message == f"base image {missing} is missing"
    assert hv.list_volumes(pool=TEST_DRIVER_POOL, prefix=prefix) == []


def test_full_copy_volume(
    hv: LibvirtHypervisor, prefix: str, test_driver_conn: libvirt.virConnect
) -> None:
    base = make_base(test_driver_conn, f"{prefix}base.qcow2")
    copy = hv.full_copy_volume(pool=TEST_DRIVER_POOL, name=f"{prefix}copy.qcow2", base_path=base)
    assert copy.backing_path is None
    assert copy.capacity_bytes == 2**30
    for v in hv.list_volumes(pool=TEST_DRIVER_POOL, prefix=prefix):
        hv.delete_volume(pool=TEST_DRIVER_POOL, name=v.name)


def test_missing_pool_is_permanent(hv: Hypervisor, prefix: str) -> None:
    with pytest.raises(HypervisorError, match="storage pool 'nope' does not exist") as exc:
        hv.clone_volume(pool="nope", name="x", base_path="/x", capacity_bytes=1)
    assert exc.value.permanent
    with pytest.raises(HypervisorError, match="does not exist"):
        hv.list_volumes(pool="nope", prefix=prefix)


def test_ensure_pool_defines_starts_and_is_idempotent(
    hv: Hypervisor, prefix: str, test_driver_conn: libvirt.virConnect
) -> None:
    name = f"{prefix}pool"
    hv.ensure_pool(name=name, path=f"/{name}")
    hv.ensure_pool(name=name, path=f"/{name}")
    pool = test_driver_conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart()
    with pytest.raises(HypervisorError, match="already exists at") as exc:
        hv.ensure_pool(name=name, path="/elsewhere")
    assert exc.value.permanent
    pool.destroy()
    hv.ensure_pool(name=name, path=f"/{name}")  # inactive: started again
    assert pool.isActive()
    pool.destroy()
    pool.undefine()


def test_kvm_not_offered_by_test_driver(hv: Hypervisor) -> None:
    assert hv.kvm_available() is False
    assert hv.kvm_available() is False  # cached


def test_console_of_stopped_domain(hv: Hypervisor, prefix: str) -> None:
    name = domain_name(prefix, "c")
    hv.define_domain(spec_for(name))
    try:
        with pytest.raises(HypervisorError, match="is not running") as exc:
            hv.console_endpoint(name=name)
        assert exc.value.permanent
    finally:
        hv.undefine(name=name)


def test_reconnects_after_connection_is_closed(prefix: str) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    assert hv.state(name=prefix) is PowerState.missing
    conn = hv._connection.get()
    conn.close()  # as if libvirtd went away underneath us
    assert hv.state(name=prefix) is PowerState.missing
    assert hv._connection.get() is not conn


def test_reopens_after_fork(prefix: str) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    parent_conn = hv._connection.get()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own connection and leave the parent's alone
        ok = False
        try:
            ok = (
                hv._connection.get() is not parent_conn
                and hv.state(name=prefix) is PowerState.missing
            )
        finally:
            os.write(write_end, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_end)
    result = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert result == b"1"
    assert hv._connection.get() is parent_conn
    assert hv.state(name=prefix) is PowerState.missing


def test_at_exit_own_connections_are_closed_and_inherited_ones_forgotten() -> None:
    """close_all (run by atexit) leaves no connection for virConnect.__del__ to close after
    the libvirt module is gone (a traceback at every exit), and never closes one inherited
    over fork() (that would end the parent's session). In a process of its own: it closes
    every connection of the process."""
    code = (
        "import os\n"
        "from vms.hypervisor.connection import close_all\n"
        "from vms.hypervisor.libvirt_backend import LibvirtHypervisor\n"
        "mine, inherited = LibvirtHypervisor('test:///default'), LibvirtHypervisor('test:///default')\n"
        "own, theirs = mine._connection.get(), inherited._connection.get()\n"
        "closed = []\n"
        "theirs.close = lambda: closed.append(theirs)\n"
        "inherited._connection._pid = os.getpid() + 1  # as if opened before a fork()\n"
        "close_all()\n"
        "assert own._o is None, 'an own connection stays open'\n"
        "assert theirs._o is None and not closed, 'an inherited one is closed or kept'\n"
        "assert mine._connection.get() is not own  # the next call opens a new one\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
