"""The worker kit's decorator, `desktop_worker`: it locks, loads, skips a vanished desktop
(or one in a state its work does not apply to) and clears the action's busy note when the
work ends, done or failed; and every worker function of the action table uses it."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from django.db import connection

from tests.fixtures import make_desktop
from vms.hypervisor import HypervisorError
from vms.models import Desktop, DesktopStatus
from vms.services.core.locks import DesktopBusy, desktop_lock
from vms.services.desktops.actions import ACTIONS, action_worker
from vms.services.desktops.worker import desktop_worker

S = DesktopStatus
pytestmark = pytest.mark.django_db(transaction=True)


def lock_free_elsewhere(desktop_id: Any) -> bool:
    """Whether another session (a thread with its own connection, as another worker)
    can take the desktop's lock right now."""
    free: list[bool] = []

    def take() -> None:
        try:
            with desktop_lock(desktop_id, wait_s=0):
                free.append(True)
        except DesktopBusy:
            free.append(False)
        finally:
            connection.close()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    assert len(free) == 1
    return free[0]


def test_the_work_runs_on_the_loaded_desktop_under_its_lock(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=S.RUNNING)
    seen: list[tuple[Desktop, bool, int]] = []

    @desktop_worker(when={S.RUNNING})
    def work(loaded: Desktop, *, times: int) -> None:
        seen.append((loaded, lock_free_elsewhere(loaded.pk), times))

    work(desktop_id=str(desktop.pk), times=3)
    assert len(seen) == 1
    loaded, free, times = seen[0]
    assert loaded.pk == desktop.pk and loaded.status == S.RUNNING and times == 3
    assert not free  # held while the work ran
    assert lock_free_elsewhere(desktop.pk)  # and let go after


def test_a_worker_without_lock_holds_none(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=S.RUNNING)
    free: list[bool] = []

    @desktop_worker(lock=False)
    def work(loaded: Desktop) -> None:
        free.append(lock_free_elsewhere(loaded.pk))

    work(desktop_id=desktop.pk)
    assert free == [True]


def test_the_lock_may_depend_on_the_workers_arguments(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=S.STOPPING)
    free: list[bool] = []

    def forced(*, force: bool = False) -> bool:
        return force

    @desktop_worker(lock=forced)
    def work(loaded: Desktop, *, force: bool = False) -> None:
        free.append(lock_free_elsewhere(loaded.pk))

    work(desktop_id=desktop.pk)
    work(desktop_id=desktop.pk, force=True)
    assert free == [True, False]


def test_a_vanished_desktop_is_skipped(employee, fake_template) -> None:
    ran: list[Desktop] = []

    @desktop_worker(busy="reboot")
    def work(loaded: Desktop) -> None:
        ran.append(loaded)

    work(desktop_id=uuid.uuid4())
    gone = make_desktop(employee, fake_template, status=S.RUNNING)
    gone_id = gone.pk
    gone.delete()
    work(desktop_id=gone_id)
    assert ran == []


def test_a_desktop_in_another_state_is_skipped_and_keeps_its_note(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=S.STOPPING, progress="reboot")
    ran: list[Desktop] = []

    @desktop_worker(when={S.RUNNING}, busy="reboot")
    def work(loaded: Desktop) -> None:
        ran.append(loaded)

    work(desktop_id=desktop.pk)
    assert ran == []
    desktop.refresh_from_db()
    assert desktop.progress == "reboot"


def test_the_busy_note_is_cleared_when_the_work_is_done(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=S.RUNNING, progress="snapshot")
    notes: list[str] = []

    @desktop_worker(busy="snapshot")
    def work(loaded: Desktop) -> None:
        notes.append(Desktop.objects.get(pk=loaded.pk).progress)

    work(desktop_id=desktop.pk)
    desktop.refresh_from_db()
    assert notes == ["snapshot"]  # still busy while the work ran
    assert desktop.progress == ""


def test_only_the_actions_own_note_is_cleared(employee, fake_template) -> None:
    # A stop or a failure in between replaced the note: it is not this action's to clear.
    desktop = make_desktop(employee, fake_template, status=S.RUNNING, progress="snapshot")

    @desktop_worker(busy="snapshot")
    def work(loaded: Desktop) -> None:
        Desktop.objects.filter(pk=loaded.pk).update(progress="stopping")

    work(desktop_id=desktop.pk)
    desktop.refresh_from_db()
    assert desktop.progress == "stopping"


@pytest.mark.parametrize(
    ("error", "note_after"),
    [
        (HypervisorError("the disk is gone", permanent=True), ""),
        (ValueError("a bug in the work"), ""),
        # the task retries these: the action is still under way, the retry clears it
        (HypervisorError("libvirtd restarting", permanent=False), "restore"),
        (DesktopBusy("held"), "restore"),
    ],
    ids=["permanent", "unexpected", "transient", "busy"],
)
def test_a_failed_work_clears_the_busy_note_unless_it_is_retried(
    employee, fake_template, error: Exception, note_after: str
) -> None:
    desktop = make_desktop(employee, fake_template, status=S.RUNNING, progress="restore")

    @desktop_worker(busy="restore")
    def work(loaded: Desktop) -> None:
        raise error

    with pytest.raises(type(error)):
        work(desktop_id=desktop.pk)
    desktop.refresh_from_db()
    assert desktop.progress == note_after
    assert lock_free_elsewhere(desktop.pk)


def test_every_worker_function_uses_the_kit() -> None:
    for action in ACTIONS.values():
        rules = getattr(action_worker(action), "worker_rules", None)
        assert rules is not None, f"{action.name}: its worker is not a desktop_worker"
        if action.busy_label:  # the request sets the note to the action's name
            assert rules.busy == action.name, action.name
        if action.moves_to is not None:  # it runs on the state the request moved to
            assert rules.when is not None and action.moves_to in rules.when, action.name
