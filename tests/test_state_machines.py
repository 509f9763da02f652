"""Every stateful row's table (vms.services.core.state_machine, docs/architecture.md section
5), checked the same way: its states are its `TextChoices`, it moves only to states it
knows, its terminal states have no exits, and its compare-and-set refuses a move the
table forbids, on a real row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.db import models

from tests.fixtures import make_desktop
from vms.models import (
    Backup,
    BackupStatus,
    Desktop,
    DesktopStatus,
    Host,
    Restore,
    RestoreTarget,
    Snapshot,
    Template,
    TemplateVersion,
)
from vms.services.core.errors import InvalidTransition
from vms.services.core.state_machine import StateMachine, state_machines

# The rows that must have a machine: every model of the app whose `status` has choices.
STATEFUL = {
    model._meta.label
    for model in apps.get_app_config("vms").get_models()
    if any(f.name == "status" and f.choices for f in model._meta.concrete_fields)
}


def test_every_stateful_row_has_one_registered_table() -> None:
    assert set(state_machines()) == STATEFUL
    assert {"vms.Desktop", "vms.Host", "vms.Snapshot", "vms.Backup", "vms.Restore",
            "vms.TemplateVersion"} <= STATEFUL  # fmt: skip


@pytest.mark.parametrize("label", sorted(STATEFUL))
def test_the_table_matches_its_rows_states(label: str) -> None:
    machine = state_machines()[label]
    field = machine.model._meta.get_field("status")
    assert isinstance(field, models.CharField)
    assert field.choices == machine.states.choices  # the row's states are the TextChoices
    assert field.default in machine.states.values
    assert set(machine.table) == set(machine.states.values), "every state has its row"
    for old, targets in machine.table.items():
        assert targets <= set(machine.states.values), f"{old} -> an unknown state"
        assert old not in targets, f"{old} -> itself"
    assert machine.terminal <= set(machine.states.values)
    for state in machine.terminal:
        assert machine.table[state] == frozenset(), f"terminal {state} has exits"
    # A state with no exits is declared terminal (not a table entry left empty by mistake).
    assert {s for s, t in machine.table.items() if not t} == set(machine.terminal)


def _desktop(owner: Any, template: Template) -> Desktop:
    return make_desktop(owner, template, status=DesktopStatus.RUNNING)


def _backup(owner: Any, template: Template) -> Backup:
    return Backup.objects.create(desktop=_desktop(owner, template), created_by=owner)


ROWS: dict[str, Callable[[Any, Template], models.Model]] = {
    "vms.Desktop": _desktop,
    "vms.Host": lambda owner, template: Host.objects.create(
        name="sm-host", uri="test:///default", storage_pool="sm-pool"
    ),
    "vms.Snapshot": lambda owner, template: Snapshot.objects.create(
        desktop=_desktop(owner, template), name="s", libvirt_name="s", created_by=owner
    ),
    "vms.Backup": _backup,
    "vms.Restore": lambda owner, template: Restore.objects.create(
        backup=_backup(owner, template),
        desktop=_desktop(owner, template),
        target=RestoreTarget.IN_PLACE,
        volume_name="v",
        job_name="j",
        created_by=owner,
    ),
    "vms.TemplateVersion": lambda owner, template: TemplateVersion.objects.create(
        template=template, number=7
    ),
}


def test_every_table_has_a_row_maker() -> None:
    assert set(ROWS) == STATEFUL


def _refused_move(machine: StateMachine) -> tuple[str, str]:
    """A move from a live (non-terminal) state that the table forbids."""
    for old in machine.states.values:
        if old in machine.terminal:
            continue
        for new in machine.states.values:
            if new != old and not machine.can_move(old=old, new=new):
                return old, new
    for old in machine.states.values:  # every live state may go anywhere (hosts: up, down)
        return old, old
    raise AssertionError("no states")


@pytest.mark.django_db
@pytest.mark.parametrize("row_label", sorted(STATEFUL))
def test_compare_and_set_refuses_a_move_the_table_forbids(
    row_label: str, employee: Any, fake_template: Template
) -> None:
    machine = state_machines()[row_label]
    row = ROWS[row_label](employee, fake_template)
    old, new = _refused_move(machine)
    machine.model._default_manager.filter(pk=row.pk).update(status=old)
    with pytest.raises(InvalidTransition):
        machine.compare_and_set(pk=row.pk, old=old, new=new)
    assert machine.model._default_manager.get(pk=row.pk).status == old  # untouched
    # A move the table allows goes through once; a writer still believing `old` loses.
    allowed = sorted(machine.table[old])[0]
    assert machine.compare_and_set(pk=row.pk, old=old, new=allowed)
    assert machine.model._default_manager.get(pk=row.pk).status == allowed
    assert not machine.compare_and_set(pk=row.pk, old=old, new=allowed)


def test_the_backup_table_is_read_through_its_machine() -> None:
    # the wrappers and the registered machines are one and the same table
    machine = state_machines()["vms.Backup"]
    assert machine.can_move(old=BackupStatus.RUNNING, new=BackupStatus.CANCELLING)
    assert not machine.can_move(old=BackupStatus.READY, new=BackupStatus.RUNNING)
