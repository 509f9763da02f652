"""The desktop state machine: one table of allowed moves, applied by compare-and-set."""

from __future__ import annotations

from uuid import UUID

from django.utils import timezone

from vms.models import Desktop, DesktopStatus
from vms.services.errors import InvalidTransition

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


def can_move(*, old: str, new: str) -> bool:
    """Whether the table allows old -> new."""
    return new in TRANSITIONS[old]


def sources_of(new: str) -> list[str]:
    """Every state from which `new` may be reached."""
    return [old for old, targets in TRANSITIONS.items() if new in targets]


def compare_and_set(*, desktop_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Move one desktop from `old` to `new` if it is still in `old`.

    Returns False when another writer got there first. Raises InvalidTransition when the
    table forbids the move (a programming error or a stale caller).
    """
    if not can_move(old=old, new=new):
        raise InvalidTransition(f"A desktop cannot go from {old} to {new}.")
    updated = Desktop.objects.filter(pk=desktop_id, status=old).update(
        status=new, status_changed_at=timezone.now(), **fields
    )
    return updated == 1


def move_from_any(
    *, desktop_id: UUID | str, allowed_from: list[str], new: str, **fields: object
) -> str | None:
    """Move to `new` from whichever of `allowed_from` the desktop is in now.

    Returns the state it left, or None when it was in none of them. One UPDATE, so two
    racing callers cannot both win.
    """
    current = Desktop.objects.filter(pk=desktop_id).values_list("status", flat=True).first()
    if current is None or current not in allowed_from or not can_move(old=current, new=new):
        return None
    if compare_and_set(desktop_id=desktop_id, old=current, new=new, **fields):
        return current
    return None
