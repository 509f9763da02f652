"""Snapshots on real guests (qemu:///system) through the REST API and a real Celery
worker. Files are written and read in the guest through its serial-console shell
(tests/guestshell.py): /root is an ext4 file system on the desktop's own disk. Some tests
(the limits, retention, a killed worker) only need disk contents: they write patterns
into a stopped desktop's qcow2 with `qemu-io` (helpers below), beyond what they boot."""

from __future__ import annotations

import subprocess
import time

import pytest
from django.conf import settings

from tests.fixtures import wait_for_status
from tests.guestshell import guest_shell
from vms.models import AuditEvent, Backup, Desktop, Snapshot

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

MARK = 0x30000000  # a byte offset inside the 1 GiB disk, beyond the boot partition


def disk_path(desktop: Desktop, hypervisor) -> str:
    info = hypervisor.volume_info(pool=desktop.host.storage_pool, name=desktop.volume_name)
    return info.path


def write_pattern(path: str, offset: int, byte: int, length: str = "64k") -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", path],
        check=True,
        capture_output=True,
    )


def has_pattern(path: str, offset: int, byte: int, length: str = "64k") -> bool:
    done = subprocess.run(
        ["qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -P {byte} {offset} {length}", path],
        capture_output=True,
        text=True,
    )
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


def shell_of(desktop: Desktop):
    return guest_shell(settings.LIBVIRT_URI, desktop.domain_name)


def launched(client, template) -> Desktop:
    answer = client.post("/api/desktops/", {"template": template.pk}, format="json")
    assert answer.status_code == 202, answer.content
    return wait_for_status(answer.json()["id"], "running")


def power(client, desktop: Desktop, action: str, wanted: str) -> Desktop:
    assert client.post(f"/api/desktops/{desktop.pk}/{action}/").status_code == 202
    return wait_for_status(desktop.pk, wanted)


def test_marker_snapshot_delete_revert(
    celery_worker, api_for, employee, other_employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    desktop = launched(client, demo_template)
    base = f"/api/desktops/{desktop.pk}/snapshots/"
    with shell_of(desktop) as shell:
        shell.run("echo before > /root/marker && sync")

    # A running desktop: the snapshot holds its memory; a revert resumes it there.
    taken = client.post(base, {"name": "before"}, format="json")
    assert taken.status_code == 202, taken.content
    live = taken.json()["id"]
    wait_idle(desktop.pk)
    snapshot = Snapshot.objects.get(pk=live)
    assert snapshot.status == "ready", snapshot.last_error
    assert snapshot.with_memory and snapshot.size_bytes > 1024 * 1024  # its RAM, measured
    with shell_of(desktop) as shell:
        shell.run("rm /root/marker && sync")
    assert client.post(f"{base}{live}/revert/").status_code == 202
    assert wait_idle(desktop.pk).status == "running"
    with shell_of(desktop) as shell:
        assert shell.run("cat /root/marker") == "before\n"  # the marker is back

    # A stopped desktop: a disk snapshot; reverting to it leaves the desktop stopped.
    power(client, desktop, "stop", "stopped")
    cold = client.post(base, {"name": "cold"}, format="json").json()["id"]
    wait_idle(desktop.pk)
    assert not Snapshot.objects.get(pk=cold).with_memory
    power(client, desktop, "start", "running")
    with shell_of(desktop) as shell:
        shell.run("rm /root/marker && echo after > /root/other && sync")
    assert client.post(f"{base}{cold}/revert/").status_code == 202
    assert wait_idle(desktop.pk).status == "stopped"
    power(client, desktop, "start", "running")
    with shell_of(desktop) as shell:
        assert shell.run("cat /root/marker") == "before\n"
        assert shell.run("ls -1 /root") == "lost+found\nmarker\n"

    # Another user's desktop: 404 on every route.
    other = api_for(other_employee)
    assert other.get(base).status_code == 404
    assert other.post(base, {"name": "x"}, format="json").status_code == 404
    assert other.post(f"{base}{live}/revert/").status_code == 404
    assert other.delete(f"{base}{live}/").status_code == 404

    assert client.delete(f"{base}{live}/").status_code == 202
    wait_idle(desktop.pk)
    assert Snapshot.objects.get(pk=live).status == "deleted"
    names = {s.name for s in hypervisor.snapshot_list(name=desktop.domain_name)}
    assert names == {Snapshot.objects.get(pk=cold).libvirt_name}
    assert [row["name"] for row in client.get(base).json()] == ["cold"]
    actions = set(AuditEvent.objects.filter(desktop=desktop).values_list("action", flat=True))
    assert {
        "snapshot.create",
        "snapshot.ready",
        "snapshot.revert",
        "snapshot.reverted",
        "snapshot.delete",
        "snapshot.deleted",
    } <= actions


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
