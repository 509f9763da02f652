"""The snapshot side of the disk quota (issue 25, low finding): requests are checked under
the owner's row lock and a snapshot being taken counts (as a running guest's memory)
before it is measured, so concurrent requests on several desktops cannot overshoot; the
worker measures the desktop again before it takes the snapshot, so figures measured
before the guest wrote more are not trusted; and a desktop in `error` (which the quota
does not count) starts again only when it fits, like a launch."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.concurrency import outcomes_at_once
from tests.fixtures import make_desktop
from vms.models import Desktop, Quota, Snapshot
from vms.services.core.errors import QuotaExceeded
from vms.services.disks.snapshot_work import desktop_snapshot_take
from vms.services.disks.snapshots import snapshot_create
from vms.settings_access import name_prefix

pytestmark = pytest.mark.django_db(transaction=True)
MIB = 1024**2
GIB = 1024**3


def _quota(user: Any, *, desktops: int = 20, disk_gib: int = 999) -> None:
    Quota.objects.create(
        user=user, max_desktops=desktops, max_vcpus=99, max_memory_mib=99999, max_disk_gib=disk_gib
    )


def test_concurrent_snapshot_requests_do_not_overshoot_the_disk_quota(
    employee: Any, fake_template: Any
) -> None:
    """Ten running desktops (1 GiB disks, 256 MiB guests: a snapshot counts 1 GiB until
    measured) ask at once, with room for two snapshots: two are taken."""
    assert connection.vendor == "postgresql", "this test proves the row lock on PostgreSQL"
    _quota(employee, disk_gib=12)
    desktops = [make_desktop(employee, fake_template, status="running") for _ in range(10)]

    def ask(desktop: Desktop) -> Callable[[], str]:
        def call() -> str:
            snapshot_create(actor=employee, desktop=desktop, name="before")
            return "taken"

        return call

    outcomes = outcomes_at_once([ask(d) for d in desktops], refusals=(QuotaExceeded,))
    assert sorted(outcomes) == ["refused"] * 8 + ["taken"] * 2
    assert [s.size_bytes for s in Snapshot.objects.all()] == [GIB, GIB]  # counted, unmeasured


def test_a_desktop_in_error_starts_again_only_within_the_quota(
    api_for: Any, employee: Any, fake_template: Any
) -> None:
    client = api_for(employee)
    _quota(employee, desktops=1, disk_gib=2)
    broken = make_desktop(employee, fake_template, status="error")
    other = make_desktop(employee, fake_template, status="stopped")
    start = f"/api/desktops/{broken.pk}/start/"
    refused = client.post(start)
    assert refused.status_code == 409, refused.content
    assert "desktops would be 2, the limit is 1" in refused.json()["detail"]
    Desktop.objects.filter(pk=other.pk).update(status="deleted")
    # Its own snapshots count again with it: 1 GiB disk + 2 GiB of snapshots > 2.
    Snapshot.objects.create(desktop=broken, name="s", libvirt_name="snap-s", status="ready",
                            size_bytes=2 * GIB)  # fmt: skip
    refused = client.post(start)
    assert refused.status_code == 409 and "disk (GiB) would be 3" in refused.json()["detail"]
    assert Desktop.objects.get(pk=broken.pk).status == "error"
    Snapshot.objects.filter(desktop=broken).update(size_bytes=GIB)
    assert client.post(start).status_code == 202
    assert Desktop.objects.get(pk=broken.pk).status == "starting"
    # Delete is never refused by the quota.
    Desktop.objects.filter(pk=broken.pk).update(status="error")
    Quota.objects.filter(user=employee).update(max_desktops=0)
    assert client.delete(f"/api/desktops/{broken.pk}/").status_code == 202


def _qemu(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


@pytest.mark.libvirt
def test_the_worker_measures_again_before_it_takes_a_snapshot(
    employee: Any, fake_template: Any, local_host: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """A real qcow2 (no guest) whose old snapshot was measured at 0 before 40 MiB were
    overwritten: the request passed on that stale figure; the worker's fresh measure finds
    the owner over the quota and the new snapshot ends in `error`, saying why."""
    volume = f"{name_prefix()}roomcheck.qcow2"
    path = f"{settings.STORAGE_POOL_PATH}/{volume}"
    _qemu("qemu-img", "create", "-q", "-f", "qcow2", path, "64M")
    _qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 40M", path)
    _qemu("qemu-img", "snapshot", "-c", "snap-old", path)
    _qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 40M", path)  # old clusters kept
    _quota(employee, disk_gib=1)  # the 1 GiB disk, and nothing else measured yet
    desktop = make_desktop(employee, fake_template, host=local_host, status="stopped",
                           volume_name=volume)  # fmt: skip
    old = Snapshot.objects.create(desktop=desktop, name="old", libvirt_name="snap-old",
                                  status="ready", size_bytes=0)  # fmt: skip
    with django_capture_on_commit_callbacks(execute=False):  # this test runs the worker
        new = snapshot_create(actor=employee, desktop=desktop, name="new")  # stale: room
    desktop_snapshot_take(desktop_id=desktop.pk)
    new.refresh_from_db()
    old.refresh_from_db()
    assert new.status == "error", new.last_error
    assert "measured now, the disk quota would be 2 GiB" in new.last_error
    assert old.size_bytes >= 40 * MIB  # the fresh figure, kept
    assert Desktop.objects.get(pk=desktop.pk).progress == ""
