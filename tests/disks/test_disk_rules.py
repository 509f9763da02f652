"""The request side of snapshots and backups (nothing boots: the fake host's queue has no
worker): who may do what, the 404s for other users, the help-desk revert rule (a reason,
an audit row, the owner told live over Channels), the quota and the state checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from tests.fixtures import make_desktop
from vms.models import AuditEvent, Backup, Restore, Snapshot
from vms.services.desktops.events import user_group

pytestmark = pytest.mark.django_db(transaction=True)


async def _receive(layer: Any, channel: str) -> dict[str, Any]:
    return dict(await asyncio.wait_for(layer.receive(channel), 10))


@pytest.fixture
def desktop(employee, fake_template):
    return make_desktop(employee, fake_template, status="running")


@pytest.fixture
def snapshot(desktop):
    return Snapshot.objects.create(
        desktop=desktop, name="before", libvirt_name="snap-x", status="ready"
    )


def test_other_users_get_404_on_every_disk_route(
    api_for, other_employee, desktop, snapshot
) -> None:
    backup = Backup.objects.create(desktop=desktop, status="ready", file_name="x.qcow2")
    restore = Restore.objects.create(
        backup=backup,
        desktop=desktop,
        target="in_place",
        status="running",
        volume_name="v",
        job_name="j",
    )
    other = api_for(other_employee)
    base = f"/api/desktops/{desktop.pk}"
    answers = [
        other.get(f"{base}/snapshots/"),
        other.post(f"{base}/snapshots/", {"name": "x"}, format="json"),
        other.post(f"{base}/snapshots/{snapshot.pk}/revert/", {"reason": "x"}, format="json"),
        other.delete(f"{base}/snapshots/{snapshot.pk}/"),
        other.post(f"{base}/reset/"),
        other.get(f"{base}/backups/"),
        other.post(f"{base}/backups/"),
        other.post(f"/api/backups/{backup.pk}/restore/", {"target": "new"}, format="json"),
        other.post(f"/api/backups/{backup.pk}/restore/", {"target": "in_place"}, format="json"),
        other.post(f"/api/backups/{backup.pk}/cancel/"),
        other.get(f"{base}/restores/"),
        other.post(f"/api/restores/{restore.pk}/cancel/"),
        other.post("/api/restores/not-a-uuid/cancel/"),
        other.get("/api/desktops/not-a-uuid/snapshots/"),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    assert Snapshot.objects.get(pk=snapshot.pk).status == "ready"
    assert Restore.objects.get(pk=restore.pk).status == "running"


def test_helpdesk_reverts_only_with_a_reason_and_the_owner_is_told_live(
    api_for, helpdesk_user, employee, desktop, snapshot
) -> None:
    layer = get_channel_layer()
    page = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(user_group(employee.pk), page)
    helpdesk = api_for(helpdesk_user)
    url = f"/api/desktops/{desktop.pk}/snapshots/{snapshot.pk}/revert/"

    refused = helpdesk.post(url, {}, format="json")
    assert refused.status_code == 400 and "reason" in refused.json()["detail"]
    assert Snapshot.objects.get(pk=snapshot.pk).status == "ready"
    # Help-desk cannot take or delete snapshots at all.
    assert (
        helpdesk.post(
            f"/api/desktops/{desktop.pk}/snapshots/", {"name": "x"}, format="json"
        ).status_code
        == 403
    )
    assert (
        helpdesk.delete(f"/api/desktops/{desktop.pk}/snapshots/{snapshot.pk}/").status_code == 403
    )

    accepted = helpdesk.post(url, {"reason": "ticket 4711: broken driver"}, format="json")
    assert accepted.status_code == 202, accepted.content
    assert Snapshot.objects.get(pk=snapshot.pk).status == "reverting"
    event = AuditEvent.objects.get(action="snapshot.revert", desktop=desktop)
    assert event.actor == helpdesk_user
    assert event.detail["reason"] == "ticket 4711: broken driver"
    assert event.detail["role"] == "helpdesk"
    while True:
        message = async_to_sync(_receive)(layer, page)
        if message["type"] == "desktop.notice":
            break
    assert "ticket 4711" in message["text"] and helpdesk_user.username in message["text"]


def test_snapshot_refusals(api_for, employee, desktop, snapshot, fake_template) -> None:
    client = api_for(employee)
    base = f"/api/desktops/{desktop.pk}/snapshots/"
    assert client.post(base, {"name": ""}, format="json").status_code == 400
    assert client.post(base, {"name": "a\nb"}, format="json").status_code == 400
    fake_template.snapshot_limit = 1
    fake_template.save()
    over = client.post(base, {"name": "second"}, format="json")
    assert over.status_code == 409 and "snapshots" in over.json()["detail"]
    # Snapshot space counts toward the disk quota (40 GiB by default).
    fake_template.snapshot_limit = 5
    fake_template.save()
    Snapshot.objects.filter(pk=snapshot.pk).update(size_bytes=45 * 1024**3)
    full = client.post(base, {"name": "third"}, format="json")
    assert full.status_code == 409 and "disk" in full.json()["detail"]
    # A desktop that is not running or stopped cannot be snapshotted.
    desktop.status = "starting"
    desktop.save()
    Snapshot.objects.filter(pk=snapshot.pk).update(size_bytes=0)
    assert client.post(base, {"name": "x"}, format="json").status_code == 409


def test_backup_and_restore_refusals(api_for, employee, desktop) -> None:
    client = api_for(employee)
    queued = Backup.objects.create(desktop=desktop)
    again = client.post(f"/api/desktops/{desktop.pk}/backups/")
    assert again.status_code == 409 and "under way" in again.json()["detail"]
    not_ready = client.post(f"/api/backups/{queued.pk}/restore/", {"target": "new"}, format="json")
    assert not_ready.status_code == 409
    Backup.objects.filter(pk=queued.pk).update(status="ready")
    bad = client.post(f"/api/backups/{queued.pk}/restore/", {"target": "elsewhere"}, format="json")
    assert bad.status_code == 400 and "target" in bad.json()["detail"]


def test_helpdesk_page_reverts_with_a_reason_only(
    client, helpdesk_user, employee, desktop, snapshot
) -> None:
    client.force_login(helpdesk_user)
    page = client.get("/helpdesk/", {"q": employee.username}).content.decode()
    assert "Revert to a snapshot" in page and str(snapshot.pk) in page
    url = f"/desktops/{desktop.pk}/revert-snapshot/"
    refused = client.post(url, {"snapshot": str(snapshot.pk), "reason": " "}, follow=True)
    assert "must give a reason" in refused.content.decode()
    assert Snapshot.objects.get(pk=snapshot.pk).status == "ready"
    done = client.post(url, {"snapshot": str(snapshot.pk), "reason": "ticket 9"}, follow=True)
    assert "reverting to" in done.content.decode()
    assert Snapshot.objects.get(pk=snapshot.pk).status == "reverting"
    assert AuditEvent.objects.get(action="snapshot.revert").detail["reason"] == "ticket 9"
    assert client.post(url, {"snapshot": "nope", "reason": "x"}).status_code == 404


def test_the_help_desk_form_is_404_for_an_employee_on_another_users_desktop(
    client, other_employee, desktop, snapshot
) -> None:
    client.force_login(other_employee)
    url = f"/desktops/{desktop.pk}/revert-snapshot/"
    assert client.post(url, {"snapshot": str(snapshot.pk), "reason": "x"}).status_code == 404


def test_restore_requests_are_listed_and_cancelled(
    api_for, employee, helpdesk_user, desktop
) -> None:
    client = api_for(employee)
    backup = Backup.objects.create(desktop=desktop, status="ready", file_name="x.qcow2")
    url = f"/api/backups/{backup.pk}/restore/"
    assert client.post(url, {"target": "in_place"}, format="json").status_code == 202
    again = client.post(url, {"target": "in_place"}, format="json")
    assert again.status_code == 409 and "busy" in again.json()["detail"]
    listed = client.get(f"/api/desktops/{desktop.pk}/restores/").json()
    assert [(r["target"], r["status"], r["progress"]) for r in listed] == [
        ("in_place", "queued", 0)
    ]
    restore = Restore.objects.get(pk=listed[0]["id"])
    assert restore.volume_name != desktop.volume_name  # copied next to the old disk
    cancel = f"/api/restores/{restore.pk}/cancel/"
    assert api_for(helpdesk_user).post(cancel).status_code == 403  # help-desk only looks
    assert client.post(cancel).status_code == 202
    assert Restore.objects.get(pk=restore.pk).status == "cancelled"
    assert client.post(cancel).status_code == 409
    assert AuditEvent.objects.filter(action="backup.restore_cancel").count() == 1

    # To a new desktop: its disk is the copy; cancelling deletes that desktop.
    answer = client.post(url, {"target": "new"}, format="json")
    assert answer.status_code == 202, answer.content
    new = answer.json()["id"]
    restore = Restore.objects.get(desktop_id=new)
    assert restore.target == "new" and restore.volume_name == restore.desktop.volume_name
    assert client.post(f"/api/restores/{restore.pk}/cancel/").status_code == 202
    assert client.get(f"/api/desktops/{new}/").json()["status"] == "deleting"


def test_backups_of_desktops_deleted_long_ago_expire(employee, fake_template, settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from vms.services.disks.backup_work import backups_expire_deleted
    from vms.services.disks.backups import backup_folder, backup_path

    settings.BACKUP_KEEP_DAYS_AFTER_DELETE = 30
    now = timezone.now()

    def deleted(days: float, *, restoring: bool = False) -> list[Backup]:
        gone = make_desktop(employee, fake_template, status="deleted")
        gone.deleted_at = now - timedelta(days=days)
        gone.save()
        rows = []
        for n in range(2):
            row = Backup.objects.create(desktop=gone, status="ready", file_name=f"{n}.qcow2")
            (backup_folder(gone.pk) / row.file_name).write_bytes(b"x")
            rows.append(row)
        if restoring:
            Restore.objects.create(
                backup=rows[1], desktop=gone, target="new", status="running",
                volume_name="v", job_name="j",
            )  # fmt: skip
        return rows

    old, recent, in_use = deleted(31), deleted(29), deleted(40, restoring=True)
    assert backups_expire_deleted(now=now) == 2
    for row in old:
        row.refresh_from_db()
        assert row.status == "expired" and not backup_path(row).exists()
    assert not backup_path(old[0]).parent.exists()  # its folder too
    for row in [*recent, *in_use]:
        row.refresh_from_db()
        assert row.status == "ready" and backup_path(row).exists()
    assert AuditEvent.objects.filter(action="backup.expired").count() == 2
    assert backups_expire_deleted(now=now) == 0  # nothing twice
    for row in [*recent, *in_use]:
        backup_path(row).unlink()
