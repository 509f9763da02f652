"""What snapshots hold, measured from the desktop's qcow2 (docs/backups.md "Snapshots"):
a real guest overwrites files it had when the snapshot was taken, and the owner's
snapshot bytes (the disk quota's snapshot part) grow by about that much at the beat's
re-measure; deleting the snapshot gives it back. Then what happens when an image cannot
be measured, or its desktop is busy (no guest: a file in the pool that is no qcow2), and
how the measured total is shared out over the rows."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.conf import settings
from django.db import connection

from tests.disks.test_snapshots_live import disk_path, launched, shell_of, wait_idle
from tests.fixtures import make_desktop
from vms.hypervisor.qemuimg import SnapshotSpace
from vms.models import Desktop, Snapshot
from vms.services.core.locks import desktop_lock
from vms.services.desktops.quotas import snapshot_bytes_of, usage
from vms.services.disks.snapshot_work import (
    snapshot_shares,
    snapshots_measure,
    snapshots_measure_host,
)
from vms.settings_access import name_prefix
from vms.tasks import backups_round

pytestmark = pytest.mark.django_db(transaction=True)
MIB = 1024**2
GIB = 1024**3
# The qcow2 tables a snapshot adds (its L1 copy, its entry, copied L2 tables): a few
# clusters of 64 KiB; and the guest's file system writes a little besides the file.
SLACK = 2 * MIB


def image(path: str) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "-f", "qcow2", "-U", "--output=json", path],
                          check=True, capture_output=True, text=True)  # fmt: skip
    info: dict[str, object] = json.loads(done.stdout)
    return info


def memory_of(path: str, snapshot_id: str) -> int:
    """The saved memory of a snapshot as qemu-img reports it (not through the portal)."""
    name = Snapshot.objects.get(pk=snapshot_id).libvirt_name
    snapshots = image(path)["snapshots"]
    assert isinstance(snapshots, list)
    return next(int(s["vm-state-size"]) for s in snapshots if s["name"] == name)


def take(client, desktop: Desktop, name: str) -> str:
    answer = client.post(f"/api/desktops/{desktop.pk}/snapshots/", {"name": name}, format="json")
    assert answer.status_code == 202, answer.content
    wait_idle(desktop.pk, timeout=180)
    snapshot = Snapshot.objects.get(pk=answer.json()["id"])
    assert snapshot.status == "ready", snapshot.last_error
    return str(snapshot.pk)


def overwrite(desktop: Desktop) -> None:
    """Write over the guest's 64 MiB file in place (the same disk blocks), to the disk."""
    with shell_of(desktop) as shell:
        shell.run("dd if=/dev/urandom of=/root/old bs=1M count=64 conv=notrunc && sync",
                  timeout=120)  # fmt: skip


def wait_grown(owner_id: int, *, above: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (now := snapshot_bytes_of(owner_id=owner_id)) <= above:
        assert time.monotonic() < deadline, f"snapshot bytes stayed {now}"
        time.sleep(0.2)
    return now


@pytest.mark.libvirt
def test_overwrites_after_a_snapshot_count_until_it_is_deleted(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    desktop = launched(client, demo_template)
    path = disk_path(desktop, hypervisor)
    with shell_of(desktop) as shell:
        shell.run("dd if=/dev/urandom of=/root/old bs=1M count=64 && sync", timeout=120)

    first = take(client, desktop, "first")
    memory = memory_of(path, first)
    before = snapshot_bytes_of(owner_id=employee.pk)
    assert before == Snapshot.objects.get(pk=first).size_bytes
    assert memory <= before < memory + SLACK  # its RAM and its tables, nothing else yet

    # The guest writes over the file it had: every cluster is copied away from the
    # snapshot, which keeps the old ones. The beat's backups round has the host's worker
    # measure again.
    overwrite(desktop)
    assert backups_round()["snapshot_hosts"] == 1
    grown = wait_grown(employee.pk, above=before + 32 * MIB)
    print(f"\nsnapshot bytes: {before} after the snapshot (its memory {memory}), "
          f"{grown} after 64 MiB overwritten")  # fmt: skip
    assert 64 * MIB - SLACK < grown - before < 64 * MIB + SLACK
    assert usage(user=employee).max_disk_gib == demo_template.disk_gib + -(-grown // GIB)

    # A revert drops the disk's new clusters: the snapshot's are the disk's again.
    assert client.post(f"/api/desktops/{desktop.pk}/snapshots/{first}/revert/").status_code == 202
    wait_idle(desktop.pk)
    reverted = snapshot_bytes_of(owner_id=employee.pk)
    print(f"after a revert to it: {reverted}")
    assert abs(reverted - before) < SLACK
    overwrite(desktop)
    assert backups_round()["snapshot_hosts"] == 1
    grown = wait_grown(employee.pk, above=before + 32 * MIB)
    assert 64 * MIB - SLACK < grown - before < 64 * MIB + SLACK

    # A second snapshot shares the new clusters with the disk; deleting the first gives
    # back its memory and the old clusters, which only it held.
    second = take(client, desktop, "second")
    both = snapshot_bytes_of(owner_id=employee.pk)
    assert 0 <= both - grown - memory_of(path, second) < SLACK
    file_before = int(str(image(path)["actual-size"]))
    assert client.delete(f"/api/desktops/{desktop.pk}/snapshots/{first}/").status_code == 202
    wait_idle(desktop.pk)
    left = snapshot_bytes_of(owner_id=employee.pk)
    print(f"two snapshots: {both} (the second's memory {memory_of(path, second)}); "
          f"the second alone, after the first's delete: {left}")  # fmt: skip
    assert left == Snapshot.objects.get(pk=second).size_bytes
    assert memory_of(path, second) <= left < memory_of(path, second) + SLACK
    assert file_before - int(str(image(path)["actual-size"])) > memory + 60 * MIB


@contextmanager
def held_elsewhere(desktop_id: uuid.UUID) -> Iterator[None]:
    """The desktop's lock held by another session (a thread with its own connection), as
    a worker busy with it would."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with desktop_lock(desktop_id):
                taken.set()
                done.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join(10)


@pytest.mark.libvirt
def test_a_desktop_not_measured_keeps_its_figures(
    employee, fake_template, local_host, hypervisor, caplog
) -> None:
    desktop = make_desktop(employee, fake_template, host=local_host, status="stopped",
                           volume_name=f"{name_prefix()}gone.qcow2")  # fmt: skip
    row = Snapshot.objects.create(desktop=desktop, name="s", libvirt_name="snap-s",
                                  status="ready", size_bytes=12345)  # fmt: skip
    caplog.set_level(logging.WARNING, logger="vms.services.disks.snapshot_work")
    assert snapshots_measure(desktop=desktop) is None  # no disk at all
    assert "disk is gone" in caplog.text

    # A volume qemu-img refuses (no qcow2): logged, the figure kept, the round goes on.
    junk = f"{name_prefix()}junk.qcow2"
    with open(f"{settings.STORAGE_POOL_PATH}/{junk}", "wb") as handle:
        handle.write(b"not an image" * 1000)
    Desktop.objects.filter(pk=desktop.pk).update(volume_name=junk)
    caplog.clear()
    assert snapshots_measure_host(host=local_host) == 0
    assert "qemu-img info failed" in caplog.text
    with held_elsewhere(desktop.pk):  # busy: skipped within the short wait, not measured
        caplog.clear()
        started = time.monotonic()
        assert snapshots_measure_host(host=local_host) == 0
        assert time.monotonic() - started < 5 and "not measured" not in caplog.text
    assert Snapshot.objects.get(pk=row.pk).size_bytes == 12345


def test_the_measured_total_is_shared_out_over_the_rows() -> None:
    old, new, failed, foreign = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "snap-other"
    names = {old: "snap-old", new: "snap-new", failed: "snap-failed"}
    memory = {"snap-old": 100 * MIB, "snap-new": 0, foreign: 10 * MIB}
    space = SnapshotSpace(0, 0, 0, total_bytes=100 * MIB + 65 * MIB + 1, vm_state_bytes=memory)
    sizes = snapshot_shares(space=space, names=names)
    # Memory first; the rest (the foreign snapshot's memory included) split, odd byte last.
    assert sizes == {old: 100 * MIB + 32 * MIB + MIB // 2, new: 32 * MIB + MIB // 2 + 1,
                     failed: 0}  # fmt: skip
    assert sum(sizes.values()) == space.total_bytes
    # A total below the memory (a figure read mid-flush) is never exceeded.
    less = SnapshotSpace(0, 0, 0, total_bytes=60 * MIB, vm_state_bytes=memory)
    assert snapshot_shares(space=less, names=names) == {old: 60 * MIB, new: 0, failed: 0}
