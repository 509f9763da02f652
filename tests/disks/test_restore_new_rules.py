"""A restore as a new desktop is a launch (issue 25, item 10): it goes through the launch's
own checks (`desktop_launch_insert`), so a template that was disabled or whose assignment
was revoked does not come back through an old backup, for the owner nor for an admin
restoring on the owner's behalf. Nothing boots: the fake host's queue has no worker."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from tests.fixtures import make_desktop
from vms.models import Backup, Desktop, Restore
from vms.roles import EMPLOYEE_GROUP

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backup(employee: Any, fake_template: Any) -> Backup:
    desktop = make_desktop(employee, fake_template, status="stopped")
    return Backup.objects.create(desktop=desktop, status="ready", file_name="x.qcow2")


def _restore_new(client: Any, backup: Backup) -> Any:
    return client.post(f"/api/backups/{backup.pk}/restore/", {"target": "new"}, format="json")


def test_a_disabled_or_revoked_template_does_not_come_back_from_a_backup(
    api_for: Any, employee: Any, admin_user_: Any, fake_template: Any, backup: Backup
) -> None:
    owner, admin = api_for(employee), api_for(admin_user_)
    before = Desktop.objects.count()

    fake_template.enabled = False
    fake_template.save()
    for client in (owner, admin):
        refused = _restore_new(client, backup)
        assert refused.status_code == 403, refused.content
        assert "disabled or no longer assigned" in refused.json()["detail"]

    fake_template.enabled = True
    fake_template.save()
    fake_template.assigned_groups.remove(Group.objects.get(name=EMPLOYEE_GROUP))
    for client in (owner, admin):
        assert _restore_new(client, backup).status_code == 403
    assert Desktop.objects.count() == before and not Restore.objects.exists()

    # Assigned again (to the owner alone): the restore is a launch like any other.
    fake_template.assigned_users.add(employee)
    done = _restore_new(owner, backup)
    assert done.status_code == 202, done.content
    assert Restore.objects.get().desktop.owner == employee


def test_the_restored_desktop_names_its_host_to_an_admin_and_not_to_its_owner(
    api_for: Any, employee: Any, admin_user_: Any, backup: Backup
) -> None:
    """The restore's answer is the desktop API's own: the host for staff only (T74)."""
    theirs = _restore_new(api_for(admin_user_), backup)
    assert theirs.status_code == 202, theirs.content
    restored = Desktop.objects.get(pk=theirs.json()["id"])
    assert theirs.json()["host"] == restored.host.name
    Desktop.objects.filter(pk=restored.pk).update(status="deleted")  # the owner's quota: 2
    mine = _restore_new(api_for(employee), backup)
    assert mine.status_code == 202 and "host" not in mine.json()
