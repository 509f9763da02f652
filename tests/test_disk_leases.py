"""Disk leases (vms.services.disks.leases): reading virtlockd's lockspace, the heartbeat's
proof that a host's disk lock manager works, and recovery refusing to go on without it.

The locks are real POSIX locks taken by another process on real files, as virtlockd takes
them (F_GETLK does not see the caller's own locks); the hosts are on libvirt's test
driver, which has no lock manager of its own. The lab tests (tests/fleet/test_recovery.py)
do the same with real virtlockds and QEMUs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

from tests.factories import DesktopFactory
from vms.hypervisor import get_hypervisor
from vms.models import AuditEvent, Desktop, DesktopStatus, Host, HostStatus
from vms.services.disks.leases import LeaseState, desktop_disk_path, disk_lease_state, lease_file
from vms.services.fleet import recovery
from vms.services.fleet.heartbeat import host_heartbeat
from vms.services.fleet.recovery import desktop_recover
from vms.settings_access import name_prefix

pytestmark = pytest.mark.django_db
S = DesktopStatus
HOLD = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)\n"  # virtlockd: byte 0, length 1
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def lease_held(path: Path) -> Iterator[None]:
    """Another process holds the lease file's lock, as a host's virtlockd does while the
    disk's QEMU runs; it lets go (and ends) when the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0


@pytest.fixture
def lockspace(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    settings.DISK_LOCKSPACE_DIR = str(tmp_path / "lockspace")
    settings.STORAGE_POOL_PATH = "/default-pool"  # the test driver's pool
    (tmp_path / "lockspace").mkdir()
    return tmp_path / "lockspace"


def test_a_lease_is_held_while_its_holder_lives_and_lost_when_it_dies(lockspace, settings) -> None:
    disk = "/default-pool/dpt-desktop-1.qcow2"
    assert disk_lease_state(disk_path=disk).state is LeaseState.ABSENT  # never leased
    path = lease_file(disk)
    assert path is not None and path.parent == lockspace
    with lease_held(path):
        answer = disk_lease_state(disk_path=disk)
        assert answer.state is LeaseState.HELD, answer
    assert disk_lease_state(disk_path=disk).state is LeaseState.LOST  # the holder is gone

    settings.DISK_LOCKSPACE_DIR = str(lockspace / "not-mounted")
    assert disk_lease_state(disk_path=disk).state is LeaseState.UNKNOWN
    settings.DISK_LOCKSPACE_DIR = ""
    assert disk_lease_state(disk_path=disk).state is LeaseState.UNKNOWN


@pytest.fixture
def running_guest(host_pair, employee, fake_template) -> Iterator[Desktop]:  # type: ignore[no-untyped-def]
    """A desktop of host 'hosta' whose guest runs on the test driver (no lease taken)."""
    desktop = DesktopFactory(owner=employee, template=fake_template, host=host_pair[0])
    name = f"{name_prefix()}lease-{str(desktop.pk)[:8]}"
    Desktop.objects.filter(pk=desktop.pk).update(domain_name=name, volume_name=f"{name}.qcow2")
    conn = libvirt.open("test:///default")  # the driver's state is shared in the process
    xml = (
        f"<domain type='test'><name>{name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    domain = conn.createXML(xml, 0)
    try:
        yield Desktop.objects.get(pk=desktop.pk)
    finally:
        domain.destroy()
        conn.close()


def test_the_heartbeat_proves_disk_locks_only_when_running_desktops_hold_their_leases(
    lockspace, settings, host_pair, running_guest
) -> None:
    host = host_pair[0]
    assert host_heartbeat(host=host)
    host.refresh_from_db()
    assert not host.disk_lock_ok
    assert "without a disk lease" in host.disk_lock_note
    assert running_guest.domain_name in host.disk_lock_note

    lease = lease_file(desktop_disk_path(running_guest.volume_name))
    assert lease is not None
    with lease_held(lease):
        assert host_heartbeat(host=host)
        host.refresh_from_db()
        assert host.disk_lock_ok, host.disk_lock_note

    settings.DISK_LOCKSPACE_DIR = ""
    assert host_heartbeat(host=host)
    host.refresh_from_db()
    assert not host.disk_lock_ok and "DISK_LOCKSPACE_DIR is not set" in host.disk_lock_note


def test_a_host_without_proven_disk_locks_neither_gives_nor_takes_desktops(
    host_pair, employee, fake_template
) -> None:
    lost, spare = host_pair
    note = "Running without a disk lease in /x: dpt-a."
    Host.objects.filter(pk=lost.pk).update(
        disk_lock_ok=False, disk_lock_note=note, status=HostStatus.DOWN
    )
    desktop = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.RUNNING)
    lost.refresh_from_db()
    done = recovery.host_recovery_start(host=lost)
    assert done == {"recovering": 0, "rehomed": 0, "held": 1}
    desktop.refresh_from_db()
    assert desktop.status == S.RUNNING and desktop.host == lost and desktop.migrate_to is None
    assert "never proved a working disk lock manager" in desktop.last_error
    assert "/x" not in desktop.last_error and "dpt-a" not in desktop.last_error  # admins' only
    refused = AuditEvent.objects.get(action="desktop.recovery_refused", desktop=desktop)
    assert "without a disk lease" in refused.detail["reason"]
    assert recovery.host_recovery_start(host=lost)["held"] == 0  # said once, not each round

    # A proven host's desktop does not go to a host without that proof either.
    Host.objects.filter(pk=lost.pk).update(disk_lock_ok=True)
    Host.objects.filter(pk=spare.pk).update(disk_lock_ok=False)
    lost.refresh_from_db()
    assert recovery.host_recovery_start(host=lost)["recovering"] == 0
    assert Desktop.objects.get(pk=desktop.pk).status == S.RUNNING


@pytest.mark.parametrize("held", [False, True], ids=["never-leased", "held"])
def test_recovery_deletes_and_starts_nothing_until_the_lease_is_lost(
    lockspace, host_pair, employee, fake_template, held
) -> None:
    lost, spare = host_pair
    fake_template.persistent = False  # its disk would be thrown away for a fresh one
    fake_template.save()
    desktop = DesktopFactory(owner=employee, template=fake_template, host=lost,
                             status=S.RECOVERING, migrate_to=spare)  # fmt: skip
    name = f"{name_prefix()}recover-{str(desktop.pk)[:8]}"
    Desktop.objects.filter(pk=desktop.pk).update(domain_name=name, volume_name=f"{name}.img")
    hypervisor = get_hypervisor(spare.uri)
    conn = libvirt.open("test:///default")
    pool = conn.storagePoolLookupByName("default-pool")
    xml = f"<volume><name>{name}.img</name><capacity>1048576</capacity></volume>"
    volume = pool.createXML(xml, 0)
    lease = lease_file(desktop_disk_path(f"{name}.img"))
    assert lease is not None
    try:
        if held:
            with lease_held(lease):
                desktop_recover(desktop_id=desktop.pk)
        else:
            desktop_recover(desktop_id=desktop.pk)
        # Its disk is still there, and nothing was defined for it on the new host.
        assert f"{name}.img" in hypervisor.list_volume_names(pool="default-pool", prefix=name)
        assert name not in {d.name for d in hypervisor.list_domains(prefix=name)}
        assert Desktop.objects.get(pk=desktop.pk).status == S.RECOVERING
    finally:
        if f"{name}.img" in pool.listVolumes():
            volume.delete(0)
        conn.close()


def test_the_admins_host_list_says_which_hosts_take_part_in_recovery_and_why_not(
    client, host_pair, admin_user_
) -> None:
    _proven, unproven = host_pair
    note = "The disk lockspace /x is not there (or not mounted) on this worker."
    Host.objects.filter(pk=unproven.pk).update(disk_lock_ok=False, disk_lock_note=note)
    client.force_login(admin_user_)
    page = client.get("/admin/vms/host/").content.decode()
    assert "Disk locks verified" in page
    assert f"No recovery: {note}" in page
    detail = client.get(f"/admin/vms/host/{unproven.pk}/change/").content.decode()
    assert note in detail
