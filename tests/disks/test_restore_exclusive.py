"""An in-place restore is exclusive (issue 25, item 11): while it runs, every other action
on the desktop answers 409 through the action table's shared precondition, from the API,
the pages and the admin's bulk actions, and no page offers one. Nothing boots: the fake
host's queue has no worker, so the restore stays queued."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import Backup, Desktop, Host, Restore
from vms.selectors import action_buttons
from vms.services.desktops.actions import ACTIONS, actions_valid_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def restoring(api_for: Any, employee: Any, fake_template: Any) -> Desktop:
    """A running desktop with an in-place restore under way (queued: no worker)."""
    desktop = make_desktop(employee, fake_template, status="running")
    backup = Backup.objects.create(desktop=desktop, status="ready", file_name="x.qcow2")
    answer = api_for(employee).post(
        f"/api/backups/{backup.pk}/restore/", {"target": "in_place"}, format="json"
    )
    assert answer.status_code == 202, answer.content
    desktop.refresh_from_db()
    assert desktop.progress == "restore"
    return desktop


def _unchanged(desktop: Desktop) -> None:
    row = Desktop.objects.get(pk=desktop.pk)
    assert (row.status, row.progress) == ("running", "restore")
    assert Restore.objects.get(desktop=desktop).status == "queued"


def test_every_action_answers_409_from_the_api_while_a_restore_runs(
    api_for: Any, employee: Any, admin_user_: Any, restoring: Desktop
) -> None:
    owner, admin = api_for(employee), api_for(admin_user_)
    base = f"/api/desktops/{restoring.pk}"
    answers = {
        name: owner.post(f"{base}/{name}/")
        for name in ("start", "stop", "force-stop", "reboot", "reset")
    }
    answers["delete"] = owner.delete(f"{base}/")
    answers["migrate"] = admin.post(f"{base}/migrate/", {}, format="json")
    answers["admin stop"] = admin.post(f"{base}/stop/")
    answers["snapshot"] = owner.post(f"{base}/snapshots/", {"name": "x"}, format="json")
    answers["backup"] = owner.post(f"{base}/backups/")
    for name, answer in answers.items():
        assert answer.status_code == 409, (name, answer.content)
        assert "restor" in answer.json()["detail"], (name, answer.json())
    _unchanged(restoring)


def test_pages_and_bulk_actions_refuse_and_offer_nothing(
    client: Client,
    employee: Any,
    admin_user_: Any,
    restoring: Desktop,
    fake_template: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    assert actions_valid_in("running", progress="restore") == []
    assert not [b for b in action_buttons(user=employee, desktop=restoring) if b.valid_now]
    client.force_login(employee)
    page = client.get("/").content.decode()
    assert "data-backup-now disabled" in page
    for name in ("stop", "reboot"):
        assert f'data-action="{name}" hidden' in page, name
        done = client.post(f"/desktops/{restoring.pk}/{name}/", follow=True).content.decode()
        assert "under way" in done and "restore" in done
    _unchanged(restoring)

    client.force_login(admin_user_)
    other = make_desktop(employee, fake_template, status="running", name="other-desk")
    chosen = {"action": "bulk_stop", "_selected_action": [restoring.pk, other.pk]}
    asked = client.post("/admin/vms/desktop/", {**chosen, "index": "0"}).content.decode()
    assert 'value="Yes, stop 1 desktop"' in asked  # the restoring one is not counted
    assert "Skipped: it is restoring" in asked
    with django_capture_on_commit_callbacks(execute=False):
        done = client.post("/admin/vms/desktop/", {**chosen, "post": "yes"}, follow=True)
    assert "restore of this desktop is under way" in done.content.decode()
    assert Desktop.objects.get(pk=other.pk).status == "stopping"
    _unchanged(restoring)
    panel = client.get(f"/admin/vms/desktop/{restoring.pk}/change/").content.decode()
    assert f"/desktops/{restoring.pk}/stop/" not in panel


def test_the_restore_is_the_only_exclusive_action_and_cancel_frees_the_desktop(
    api_for: Any, employee: Any, restoring: Desktop, fake_host: Host
) -> None:
    assert [a.name for a in ACTIONS.values() if a.exclusive] == ["restore"]
    restore = Restore.objects.get(desktop=restoring)
    owner = api_for(employee)
    assert owner.post(f"/api/restores/{restore.pk}/cancel/").status_code == 202
    # The worker clears the note when it sees the cancelled restore; no worker serves the
    # fake host, so stand in for it here (what `desktop_restore` does at its end).
    Desktop.objects.filter(pk=restoring.pk).update(progress="")
    assert owner.post(f"/api/desktops/{restoring.pk}/stop/").status_code == 202
