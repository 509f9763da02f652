"""Snapshots, reset, backups and restores on real guests (qemu:///system) through the
REST API and a real Celery worker. Until the demo guest keeps /root on its disk
(docs/guest-contract), the guest's writes are made at the disk level: the test writes
marker data into the desktop's qcow2 with `qemu-io` while the desktop is stopped, and reads
it back the same way; with the persistent guest these become guest-shell writes."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.fixtures import wait_for_status
from vms.models import AuditEvent, Backup, Desktop, Snapshot

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

MARK = 0x30000000  # a byte offset inside the 1 GiB disk, beyond the boot partition


def disk_path(desktop: Desktop, hypervisor) -> str:
    info = hypervisor.volume_info(pool=desktop.host.storage_pool, name=desktop.volume_name)
    return info.path


def write_pattern(path: str, offset: int, byte: int, length: str = "64k") -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", path],
                   check=True, capture_output=True)  # fmt: skip


def has_pattern(path: str, offset: int, byte: int, length: str = "64k") -> bool:
    done = subprocess.run(
        ["qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -P {byte} {offset} {length}", path],
        capture_output=True, text=True,
    )  # fmt: skip
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def wait_idle(desktop_id, *, timeout: float = 120) -> Desktop:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desktop = Desktop.objects.get(pk=desktop_id)
        if desktop.progress in ("", "ready") and desktop.status in ("running", "stopped"):
            return desktop
        time.sleep(0.2)
    raise AssertionError(f"desktop still busy: {desktop.progress}")


def wait_backup(backup_id, *, timeout: float = 180) -> Backup:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backup = Backup.objects.get(pk=backup_id)
        if backup.status not in ("queued", "running", "cancelling"):
            return backup
        time.sleep(0.2)
    raise AssertionError("backup did not finish")


def launched_and_stopped(client, template) -> Desktop:
    launched = client.post("/api/desktops/", {"template": template.pk}, format="json")
    assert launched.status_code == 202, launched.content
    desktop_id = launched.json()["id"]
    wait_for_status(desktop_id, "running")
    assert client.post(f"/api/desktops/{desktop_id}/force-stop/").status_code == 202
    return wait_for_status(desktop_id, "stopped")


def test_marker_snapshot_delete_revert(
    celery_worker, api_for, employee, other_employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    desktop = launched_and_stopped(client, demo_template)
    path = disk_path(desktop, hypervisor)
    write_pattern(path, MARK, 0xAB)  # the marker file

    taken = client.post(f"/api/desktops/{desktop.pk}/snapshots/", {"name": "before"}, format="json")
    assert taken.status_code == 202, taken.content
    sid = taken.json()["id"]
    wait_idle(desktop.pk)
    snapshot = Snapshot.objects.get(pk=sid)
    assert snapshot.status == "ready", snapshot.last_error
    assert snapshot.with_memory is False

    write_pattern(path, MARK, 0x00)  # the marker deleted
    assert not has_pattern(path, MARK, 0xAB)
    reverted = client.post(f"/api/desktops/{desktop.pk}/snapshots/{sid}/revert/")
    assert reverted.status_code == 202, reverted.content
    after = wait_idle(desktop.pk)
    assert after.status == "stopped"
    assert has_pattern(path, MARK, 0xAB)  # the marker is back

    # Another user's desktop: 404 on every route.
    other = api_for(other_employee)
    base = f"/api/desktops/{desktop.pk}/snapshots/"
    assert other.get(base).status_code == 404
    assert other.post(base, {"name": "x"}, format="json").status_code == 404
    assert other.post(f"{base}{sid}/revert/").status_code == 404
    assert other.delete(f"{base}{sid}/").status_code == 404

    # A running desktop: a snapshot with memory; revert leaves it running.
    assert client.post(f"/api/desktops/{desktop.pk}/start/").status_code == 202
    wait_for_status(desktop.pk, "running")
    live = client.post(base, {"name": "live"}, format="json").json()["id"]
    wait_idle(desktop.pk)
    assert Snapshot.objects.get(pk=live).with_memory
    assert Snapshot.objects.get(pk=live).size_bytes > 1024 * 1024  # the saved RAM, measured
    assert client.post(f"{base}{live}/revert/").status_code == 202
    assert wait_idle(desktop.pk).status == "running"
    assert hypervisor.state(name=desktop.domain_name) == "running"

    assert client.delete(f"{base}{sid}/").status_code == 202
    wait_idle(desktop.pk)
    assert Snapshot.objects.get(pk=sid).status == "deleted"
    names = {s.name for s in hypervisor.snapshot_list(name=desktop.domain_name)}
    assert names == {Snapshot.objects.get(pk=live).libvirt_name}
    listed = client.get(base).json()
    assert [row["name"] for row in listed] == ["live"]
    actions = set(AuditEvent.objects.filter(desktop=desktop).values_list("action", flat=True))
    assert {"snapshot.create", "snapshot.ready", "snapshot.revert", "snapshot.reverted",
            "snapshot.delete", "snapshot.deleted"} <= actions  # fmt: skip


def test_snapshot_limit_per_template(celery_worker, api_for, employee, demo_template) -> None:
    demo_template.snapshot_limit = 1
    demo_template.save()
    client = api_for(employee)
    desktop = launched_and_stopped(client, demo_template)
    base = f"/api/desktops/{desktop.pk}/snapshots/"
    assert client.post(base, {"name": "one"}, format="json").status_code == 202
    wait_idle(desktop.pk)
    refused = client.post(base, {"name": "two"}, format="json")
    assert refused.status_code == 409
    assert "snapshots" in refused.json()["detail"]
