"""Backups and restores on real guests through the REST API and a real Celery worker
(docs/backups.md). The main test writes and reads files in the guest's /root through its
serial shell; retention and the schedule write patterns at the disk level (qemu-io)."""

from __future__ import annotations

import time

import pytest

from tests.disks.test_snapshots_live import (
    MARK,
    disk_path,
    launched,
    launched_and_stopped,
    power,
    shell_of,
    wait_backup,
    wait_for_status,
    wait_idle,
    write_pattern,
)
from vms.hypervisor import qemuimg
from vms.models import Backup, Desktop
from vms.services.disks.backups import backup_folder, backup_path

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
    desktop = launched(client, demo_template)
    with shell_of(desktop) as shell:
        shell.run("echo first > /root/one && sync")

    full = backed_up(client, desktop)  # live, the guest keeps running
    assert not full.incremental
    with shell_of(desktop) as shell:  # another file, 10 MiB, after the first backup
        shell.run("dd if=/dev/urandom of=/root/two bs=1M count=10 2>/dev/null && sync", timeout=60)
        two = shell.run("md5sum /root/two")
    inc = backed_up(client, desktop)
    assert inc.parent_id == full.pk
    assert 10 * 2**20 <= inc.bytes_written < 14 * 2**20  # about the 10 MiB, not the disk
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

    # In place: the files are removed, then the disk is restored from the chain.
    with shell_of(desktop) as shell:
        shell.run("rm /root/one /root/two && sync")
    answer = client.post(f"/api/backups/{inc.pk}/restore/", {"target": "in_place"}, format="json")
    assert answer.status_code == 202, answer.content
    restored = wait_idle(desktop.pk)
    assert restored.status == "stopped" and restored.last_error == ""
    qemuimg.image_check(disk_path(restored, hypervisor))
    power(client, desktop, "start", "running")
    with shell_of(desktop) as shell:
        assert shell.run("cat /root/one") == "first\n"
        assert shell.run("md5sum /root/two") == two

    # Destroyed, then restored to a new desktop.
    assert client.delete(f"/api/desktops/{desktop.pk}/").status_code == 202
    wait_for_status(desktop.pk, "deleted")
    answer = client.post(f"/api/backups/{inc.pk}/restore/", {"target": "new"}, format="json")
    assert answer.status_code == 202, answer.content
    new = wait_for_status(answer.json()["id"], "running")
    assert new.restored_from_id == inc.pk
    with shell_of(new) as shell:
        assert shell.run("cat /root/one") == "first\n"
        assert shell.run("md5sum /root/two") == two
    new = power(client, new, "stop", "stopped")
    qemuimg.image_check(disk_path(new, hypervisor))


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
    from vms.services.disks.backups import backups_due, backups_round

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
