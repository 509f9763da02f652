"""Backups count in their owner's disk quota and are rate-limited (issue 25, item 9): one
under way per desktop, BACKUPS_PER_USER_PER_DAY requests a day, and no backup the disk
quota has no room for (a deleted desktop's backups count while they are kept). Refusals
are 409 with a detail naming the limit, checked under the owner's row lock like launches.
Nothing boots: the fake host's queue has no worker, so requested backups stay queued."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tests.concurrency import outcomes_at_once
from tests.fixtures import make_desktop
from vms.models import Backup, Desktop, Quota
from vms.services.core.errors import QuotaExceeded
from vms.services.desktops.quotas import usage
from vms.services.disks.backups import backup_request

pytestmark = pytest.mark.django_db(transaction=True)
GIB = 1024**3


def _quota(user: Any, disk_gib: int) -> None:
    Quota.objects.create(
        user=user, max_desktops=20, max_vcpus=99, max_memory_mib=99999, max_disk_gib=disk_gib
    )


def _backup(client: Any, desktop: Desktop) -> Any:
    return client.post(f"/api/desktops/{desktop.pk}/backups/")


def test_backups_fill_the_disk_quota_and_a_full_one_is_refused(
    api_for: Any, employee: Any, fake_template: Any
) -> None:
    client = api_for(employee)
    _quota(employee, 4)
    first, second = (make_desktop(employee, fake_template, status="stopped") for _ in range(2))
    gone = make_desktop(employee, fake_template, status="deleted", deleted_at=timezone.now())
    kept = Backup.objects.create(
        desktop=gone, status="ready", file_name="x.qcow2", bytes_written=GIB + 1
    )
    # 2 disks + 2 GiB of a deleted desktop's backup (rounded up) + 1 for this one: 5 > 4.
    refused = _backup(client, first)
    assert refused.status_code == 409, refused.content
    assert "disk (GiB, snapshots and backups included) would be 5" in refused.json()["detail"]
    assert usage(user=employee).max_disk_gib == 4  # what the dashboard's Disk meter shows

    Backup.objects.filter(pk=kept.pk).update(bytes_written=GIB // 2)
    assert _backup(client, first).status_code == 202  # 2 + 1 + 1 = 4
    # The one under way counts as its whole disk until it is measured: no room for more.
    again = _backup(client, second)
    assert again.status_code == 409 and "would be 5" in again.json()["detail"]
    # One under way per desktop, whatever the quota.
    Quota.objects.filter(user=employee).update(max_disk_gib=100)
    busy = _backup(client, first)
    assert busy.status_code == 409 and "already under way" in busy.json()["detail"]
    # A launch sees the backups too.
    Quota.objects.filter(user=employee).update(max_disk_gib=4)
    launch = client.post("/api/desktops/", {"template": fake_template.pk}, format="json")
    assert launch.status_code == 409 and "disk" in launch.json()["detail"]


def test_a_user_asks_for_at_most_the_daily_number_of_backups(
    api_for: Any, employee: Any, fake_template: Any, settings: Any
) -> None:
    settings.BACKUPS_PER_USER_PER_DAY = 2
    client = api_for(employee)
    desktops = [make_desktop(employee, fake_template, status="running") for _ in range(3)]
    for desktop in desktops[:2]:
        assert _backup(client, desktop).status_code == 202
    Backup.objects.update(status="cancelled")  # cancelled ones were still asked for
    refused = _backup(client, desktops[2])
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "backups requested in 24 hours would be 3, the limit is 2" in detail
    # The template's schedule is the admin's: not counted, not refused.
    scheduled = backup_request(actor=None, desktop=desktops[2], scheduled=True)
    assert scheduled.scheduled
    # A day later the window has moved on.
    Backup.objects.filter(scheduled=False).update(created_at=timezone.now() - timedelta(hours=25))
    Backup.objects.filter(pk=scheduled.pk).update(status="cancelled")
    assert _backup(client, desktops[2]).status_code == 202


def test_concurrent_backup_requests_do_not_overshoot_the_quota(
    employee: Any, fake_template: Any
) -> None:
    """Ten desktops' backups asked at once, with room for exactly two: two are queued."""
    assert connection.vendor == "postgresql", "this test proves the row lock on PostgreSQL"
    _quota(employee, 12)  # ten 1 GiB disks, room for two more
    desktops = [make_desktop(employee, fake_template, status="stopped") for _ in range(10)]

    def ask(desktop: Desktop) -> Callable[[], str]:
        def call() -> str:
            backup_request(actor=employee, desktop=desktop)
            return "queued"

        return call

    outcomes = outcomes_at_once([ask(d) for d in desktops], refusals=(QuotaExceeded,))
    assert sorted(outcomes) == ["queued"] * 2 + ["refused"] * 8
    assert Backup.objects.count() == 2


def test_a_scheduled_backup_without_room_is_skipped_and_says_why(
    employee: Any, fake_template: Any, caplog: Any
) -> None:
    from vms.services.disks.backups import backups_round

    fake_template.backup_every_hours = 1
    fake_template.save()
    _quota(employee, 1)  # the desktop's own 1 GiB disk: no room for a copy of it
    desktop = make_desktop(employee, fake_template, status="running")
    caplog.set_level("INFO", logger="vms.services.disks.backups")
    assert backups_round() == 0
    assert not Backup.objects.exists()
    assert f"scheduled backup of desktop {desktop.pk} skipped: Quota exceeded: disk" in caplog.text
    Quota.objects.filter(user=employee).update(max_disk_gib=2)
    assert backups_round() == 1
