"""The desktop state machine: one table of allowed moves, applied by compare-and-set
(through the state-machine helper, `vms.services.core.state_machine`)."""

from __future__ import annotations

from uuid import UUID

from vms.models import Desktop, DesktopStatus
from vms.services.core.state_machine import StateMachine

S = DesktopStatus

TRANSITIONS: dict[str, frozenset[str]] = {
    S.PROVISIONING: frozenset({S.STARTING, S.ERROR, S.DELETING}),
    # starting -> stopping: a forced stop of a desktop that is still booting.
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.RECOVERING, S.ERROR, S.DELETING}),
    S.RUNNING: frozenset({S.STOPPING, S.STOPPED, S.MIGRATING, S.RECOVERING, S.ERROR, S.DELETING}),
    # migrating -> running: moved (or failed to, still running where it was).
    S.MIGRATING: frozenset({S.RUNNING, S.STOPPED, S.ERROR}),
    # recovering -> running: restarted on another host, or its own host came back.
    S.RECOVERING: frozenset({S.RUNNING, S.ERROR}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.RECOVERING, S.ERROR, S.DELETING}),
    S.STOPPED: frozenset({S.STARTING, S.RUNNING, S.ERROR, S.DELETING}),
    S.ERROR: frozenset({S.STARTING, S.STOPPED, S.RUNNING, S.DELETING}),
    S.DELETING: frozenset({S.DELETED, S.ERROR}),
    S.DELETED: frozenset(),
}

DESKTOP_STATES = StateMachine(
    model=Desktop,
    states=S,
    table=TRANSITIONS,
    what="A desktop",
    terminal=frozenset({S.DELETED}),
    changed_at_field="status_changed_at",
)


def can_move(*, old: str, new: str) -> bool:
    """Whether the table allows old -> new."""
    return DESKTOP_STATES.can_move(old=old, new=new)


def sources_of(new: str) -> list[str]:
    """Every state from which `new` may be reached."""
    return DESKTOP_STATES.sources_of(new)


def compare_and_set(*, desktop_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Move one desktop from `old` to `new` if it is still in `old` (False when another
    writer got there first; StateMachine.compare_and_set)."""
    return DESKTOP_STATES.compare_and_set(pk=desktop_id, old=old, new=new, **fields)


def move_from_any(
    *, desktop_id: UUID | str, allowed_from: list[str], new: str, **fields: object
) -> str | None:
    """Move to `new` from whichever of `allowed_from` the desktop is in now; the state it
    left, or None (StateMachine.move_from_any)."""
    return DESKTOP_STATES.move_from_any(pk=desktop_id, allowed_from=allowed_from, new=new, **fields)
