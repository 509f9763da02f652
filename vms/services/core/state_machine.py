"""The state-machine helper: one table of allowed moves per kind of stateful row, applied
by compare-and-set (`filter(pk=..., status=old).update(status=new)`), so that two writers
racing for the same row cannot both win.

A domain declares its table once (e.g. `vms.services.desktops.transitions`) and writes its
row's state only through its machine. Every machine is registered (`state_machines`), so
that one test checks every table against its row's `TextChoices`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import models
from django.utils import timezone

from vms.services.core.errors import InvalidTransition


class StateMachine:
    """The allowed moves of `model`'s `status` field (its values: `states`), and the
    compare-and-set that applies them (stamping `changed_at_field` with the time of the
    move when it is set). `terminal`: the states a row never leaves."""

    def __init__(
        self,
        *,
        model: type[models.Model],
        states: type[models.TextChoices],
        table: Mapping[str, frozenset[str]],
        what: str,
        terminal: frozenset[str] = frozenset(),
        changed_at_field: str = "",
    ) -> None:
        self.model = model
        self.states = states
        self.table = table
        self.what = what
        self.terminal = terminal
        self.changed_at_field = changed_at_field
        _MACHINES[model._meta.label] = self

    def can_move(self, *, old: str, new: str) -> bool:
        """Whether the table allows old -> new."""
        return new in self.table[old]

    def sources_of(self, new: str) -> list[str]:
        """Every state from which `new` may be reached."""
        return [old for old, targets in self.table.items() if new in targets]

    def compare_and_set(self, *, pk: Any, old: str, new: str, **fields: object) -> bool:
        """Move one row from `old` to `new` if it is still in `old`.

        Returns False when another writer got there first. Raises InvalidTransition when
        the table forbids the move (a programming error or a stale caller).
        """
        if not self.can_move(old=old, new=new):
            raise InvalidTransition(f"{self.what} cannot go from {old} to {new}.")
        if self.changed_at_field:
            fields = {self.changed_at_field: timezone.now(), **fields}
        updated = self.model._default_manager.filter(pk=pk, status=old).update(status=new, **fields)
        return updated == 1

    def move_from_any(
        self, *, pk: Any, allowed_from: list[str], new: str, **fields: object
    ) -> str | None:
        """Move to `new` from whichever of `allowed_from` the row is in now.

        Returns the state it left, or None when it was in none of them. One UPDATE, so two
        racing callers cannot both win.
        """
        current = self.model._default_manager.filter(pk=pk).values_list("status", flat=True)
        state = current.first()
        if state is None or state not in allowed_from or not self.can_move(old=state, new=new):
            return None
        if self.compare_and_set(pk=pk, old=state, new=new, **fields):
            return str(state)
        return None


_MACHINES: dict[str, StateMachine] = {}


def state_machines() -> dict[str, StateMachine]:
    """Every registered machine by its model's label ("vms.Desktop"), once the services
    that declare them are loaded (`services_load`)."""
    from vms.services.core.discovery import services_load

    services_load()
    return dict(_MACHINES)
