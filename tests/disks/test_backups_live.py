"""Backups and restores on real guests through the REST API and a real Celery worker
(docs/backups.md). Disk contents are written and read at the disk level with qemu-io while
the desktop is stopped (see test_snapshots_live)."""

from __future__ import annotations

import time

import pytest

from tests.disks.test_snapshots_live import (
    MARK,
    disk_path,
    has_pattern,
    launched_and_stopped,
    wait_backup,
    wait_for_status,
    wait_idle,
    write_pattern,
)
from vms.hypervisor import qemuimg
from vms.models import Backup, Desktop
from vms.services.backups import backup_folder, backup_path

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
SECOND = MARK + 0x1000000


def backed_up(client, desktop: Desktop) -> Backup:
    answer = client.post(f"/api/desktops/{desktop.pk}/backups/")
    assert answer.status_code == 202, answer.content
    backup = wait_backup(answer.json()["id"])
    assert backup.status == "ready", backup.last_error
    return backup


def test_full_incremental_destroy_restore_both_ways(
    celery_worker, api_for, employee, other_employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    desktop = launched_and_stopped(client, demo_template)
    path = disk_path(desktop, hypervisor)
    write_pattern(path, MARK, 0xAB, "4M")

    full = backed_up(client, desktop)
    assert not full.incremental and full.bytes_written > 4 * 1024 * 1024
    write_pattern(path, SECOND, 0xCD, "1M")  # another file, after the first backup
    inc = backed_up(client, desktop)
    assert inc.parent_id == full.pk
    assert inc.bytes_written < 3 * 1024 * 1024  # about the 1 MiB changed, not the disk
    for backup in (full, inc):
        qemuimg.image_check(str(backup_path(backup)))
    listed = client.get(f"/api/desktops/{desktop.pk}/backups/").json()
    assert [row["id"] for row in listed] == [str(inc.pk), str(full.pk)]

    # Another user: 404 on the desktop's backups and on the backup itself.
    other = api_for(other_employee)
    assert other.get(f"/api/desktops/{desktop.pk}/backups/").status_code == 404
    assert other.post(f"/api/desktops/{desktop.pk}/backups/").status_code == 404
    assert (
        other.post(f"/api/backups/{inc.pk}/restore/", {"target": "new"}, format="json").status_code
        == 404
    )

    # In place: the disk is wiped, then restored from the chain.
    write_pattern(path, MARK, 0x00, "4M")
    write_pattern(path, SECOND, 0x00, "1M")
    answer = client.post(f"/api/backups/{inc.pk}/restore/", {"target": "in_place"}, format="json")
    assert answer.status_code == 202, answer.content
    restored = wait_idle(desktop.pk)
    assert restored.last_error == ""
    path = disk_path(restored, hypervisor)
    assert has_pattern(path, MARK, 0xAB, "4M") and has_pattern(path, SECOND, 0xCD, "1M")
    qemuimg.image_check(path)
    assert client.post(f"/api/desktops/{desktop.pk}/start/").status_code == 202
    wait_for_status(desktop.pk, "running")

    # Destroyed, then restored to a new desktop.
    assert client.delete(f"/api/desktops/{desktop.pk}/").status_code == 202
    wait_for_status(desktop.pk, "deleted")
    answer = client.post(f"/api/backups/{inc.pk}/restore/", {"target": "new"}, format="json")
    assert answer.status_code == 202, answer.content
    new = wait_for_status(answer.json()["id"], "running")
    assert new.restored_from_id == inc.pk
    assert client.post(f"/api/desktops/{new.pk}/force-stop/").status_code == 202
    new = wait_for_status(new.pk, "stopped")
    new_path = disk_path(new, hypervisor)
    assert has_pattern(new_path, MARK, 0xAB, "4M") and has_pattern(new_path, SECOND, 0xCD, "1M")
    qemuimg.image_check(new_path)


def test_running_desktop_backs_up_live_and_incrementally(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    launched = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
    desktop = wait_for_status(launched.json()["id"], "running")
    full = backed_up(client, desktop)
    inc = backed_up(client, desktop)
    assert inc.parent_id == full.pk and inc.bytes_written < full.bytes_written
    assert hypervisor.state(name=desktop.domain_name) == "running"  # never paused for it
    # Only the last two checkpoints are kept: the parent's (until this one is done) and
    # the new one; older bitmaps would only cost every guest write.
    third = backed_up(client, desktop)
    assert third.parent_id == inc.pk
    assert set(hypervisor.checkpoint_names(name=desktop.domain_name)) == {
        inc.checkpoint,
        third.checkpoint,
    }


def test_retention_merges_the_oldest_and_the_chain_still_reads_whole(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    demo_template.backup_keep = 2
    demo_template.save()
    client = api_for(employee)
    desktop = launched_and_stopped(client, demo_template)
    path = disk_path(desktop, hypervisor)
    offsets = [MARK + n * 0x200000 for n in range(3)]
    made = []
    for n, offset in enumerate(offsets):
        write_pattern(path, offset, 0x11 + n, "1M")
        made.append(backed_up(client, desktop))
    wait_idle(desktop.pk)
    deadline = time.monotonic() + 30  # retention runs right after the backup is ready
    while Backup.objects.get(pk=made[0].pk).status != "expired" and time.monotonic() < deadline:
        time.sleep(0.1)
    first, second, third = (Backup.objects.get(pk=b.pk) for b in made)
    assert first.status == "expired" and not backup_path(first).exists()
    assert second.parent_id is None  # merged: now the chain's full backup
    assert third.parent_id == second.pk
    qemuimg.image_check(str(backup_path(second)))
    # The newest backup still reads every write, the first one's included.
    assert qemuimg.image_compare(str(backup_path(third)), path)


def test_scheduled_backups_and_cancel(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    from vms.services.backups import backups_due, backups_round

    demo_template.backup_every_hours = 24
    demo_template.save()
    client = api_for(employee)
    desktop = launched_and_stopped(client, demo_template)
    write_pattern(disk_path(desktop, hypervisor), 0, 0x42, "900M")
    assert backups_due() == [desktop]
    assert backups_round() == 1
    backup = Backup.objects.get(desktop=desktop)
    assert backup.scheduled and backups_due() == []
    # Cancel it while it copies: nothing listed, no file, no checkpoint left.
    deadline = time.monotonic() + 60
    while Backup.objects.get(pk=backup.pk).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = client.post(f"/api/backups/{backup.pk}/cancel/")
    assert answer.status_code == 202, answer.content
    backup = wait_backup(backup.pk)
    assert backup.status == "cancelled", backup.status
    assert client.get(f"/api/desktops/{desktop.pk}/backups/").json() == []
    assert list(backup_folder(desktop.pk).iterdir()) == []
    assert hypervisor.checkpoint_names(name=desktop.domain_name) == []
    assert hypervisor.state(name=desktop.domain_name) == "shutoff"
