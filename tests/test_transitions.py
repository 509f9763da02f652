"""The state table and compare-and-set."""

from __future__ import annotations

import pytest

from tests.fixtures import make_desktop
from vms.models import DesktopStatus
from vms.services.core.errors import InvalidTransition
from vms.services.desktops import transitions

S = DesktopStatus


def test_every_state_is_in_the_table() -> None:
    assert set(transitions.TRANSITIONS) == set(S.values)


def test_deleted_is_final() -> None:
    assert transitions.TRANSITIONS[S.DELETED] == frozenset()


def test_forbidden_move_raises() -> None:
    with pytest.raises(InvalidTransition):
        transitions.compare_and_set(
            desktop_id="00000000-0000-0000-0000-000000000000", old=S.DELETED, new=S.RUNNING
        )


@pytest.mark.django_db
def test_compare_and_set_loses_when_state_moved(fake_template, employee) -> None:
    desktop = make_desktop(employee, fake_template, status=S.RUNNING)
    assert transitions.compare_and_set(desktop_id=desktop.pk, old=S.RUNNING, new=S.STOPPING)
    # A second writer that still believes the desktop is running must lose.
    assert not transitions.compare_and_set(desktop_id=desktop.pk, old=S.RUNNING, new=S.DELETING)
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPING


@pytest.mark.django_db
def test_move_from_any_reports_the_state_it_left(fake_template, employee) -> None:
    desktop = make_desktop(employee, fake_template, status=S.STOPPED)
    left = transitions.move_from_any(
        desktop_id=desktop.pk, allowed_from=[S.STOPPED, S.ERROR], new=S.STARTING
    )
    assert left == S.STOPPED
    assert (
        transitions.move_from_any(desktop_id=desktop.pk, allowed_from=[S.STOPPED], new=S.STARTING)
        is None
    )
