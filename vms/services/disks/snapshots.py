"""Snapshots of a desktop's disk: take, list, revert, delete (docs/backups.md).

People's requests (`snapshot_*` below) write a Snapshot row in a pending state with its
audit row and queue the desktop's action task ("snapshot", "snapshot-revert",
"snapshot-delete" in the action table) on commit; the worker functions in
`vms.services.disks.snapshot_work` do the libvirt half. Owners and admins manage a desktop's
snapshots; help-desk staff may only revert, and only with a stated reason, which is
audited and shown to the owner live.
"""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction

from vms.models import Desktop, DesktopStatus, Snapshot, SnapshotStatus
from vms.roles import DesktopRole, desktop_role
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import InvalidName, InvalidTransition, QuotaExceeded, ServiceError
from vms.services.core.queue import broker_check, enqueue_desktop_task
from vms.services.core.state_machine import StateMachine
from vms.services.desktops.actions import (
    ACTIONS,
    ActionName,
    disk_work_check,
)
from vms.services.desktops.events import push_desktop_changed, push_owner_notice
from vms.services.desktops.quotas import effective_quota, usage

S = SnapshotStatus
GIB = 1024**3
NAME_MAX = 100
# A desktop whose snapshots may be changed: steady states only.
SNAPSHOT_DESKTOP_STATES = frozenset({DesktopStatus.RUNNING, DesktopStatus.STOPPED})
MANAGERS = frozenset({DesktopRole.OWNER, DesktopRole.ADMIN})

SNAPSHOT_TRANSITIONS: dict[str, frozenset[str]] = {
    S.CREATING: frozenset({S.READY, S.ERROR}),
    S.READY: frozenset({S.REVERTING, S.DELETING}),
    S.REVERTING: frozenset({S.READY, S.ERROR}),
    S.DELETING: frozenset({S.DELETED, S.ERROR}),
    S.ERROR: frozenset({S.DELETING}),
    S.DELETED: frozenset(),
}
# Snapshots that exist (or are being made) and hold space.
LIVE = (S.CREATING, S.READY, S.REVERTING, S.DELETING, S.ERROR)


SNAPSHOT_STATES = StateMachine(
    model=Snapshot,
    states=S,
    table=SNAPSHOT_TRANSITIONS,
    what="A snapshot",
    terminal=frozenset({S.DELETED}),
)


def snapshot_move(*, snapshot_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Compare-and-set one snapshot's status through SNAPSHOT_TRANSITIONS."""
    return SNAPSHOT_STATES.compare_and_set(pk=snapshot_id, old=old, new=new, **fields)


def _busy(desktop: Desktop) -> bool:
    pending = (S.CREATING, S.REVERTING, S.DELETING)
    return desktop.snapshots.filter(status__in=pending).exists()


def _steady(desktop: Desktop, *, action: ActionName, what: str) -> Desktop:
    """The desktop's row locked, refusing states where its disk may not be touched."""
    row = Desktop.objects.select_for_update().select_related("template").get(pk=desktop.pk)
    disk_work_check(row, action=action, what=what)
    if _busy(row):
        raise InvalidTransition(f"Another snapshot operation is under way; {what} waits for it.")
    return row


def _name_clean(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise InvalidName("Give the snapshot a name.")
    if len(cleaned) > NAME_MAX or any(not char.isprintable() for char in cleaned):
        raise InvalidName(f"A snapshot name is at most {NAME_MAX} printable characters.")
    return cleaned


def _limits_check(row: Desktop) -> None:
    count = row.snapshots.filter(status__in=LIVE).count()
    if count >= row.template.snapshot_limit:
        raise QuotaExceeded(
            limit=f"snapshots of a {row.template.name} desktop",
            allowed=row.template.snapshot_limit,
            requested=count + 1,
        )
    limits, used = effective_quota(user=row.owner), usage(user=row.owner)
    expected_gib = snapshot_expected_bytes(row) // GIB
    if used.max_disk_gib + expected_gib > limits.max_disk_gib:
        raise QuotaExceeded(
            limit="disk (GiB, snapshots included)",
            allowed=limits.max_disk_gib,
            requested=used.max_disk_gib + expected_gib,
        )


def snapshot_expected_bytes(row: Desktop) -> int:
    """What a new snapshot is counted as until it is measured: a running guest's memory
    (whole GiB, rounded up), which the snapshot saves; nothing for a stopped one (its
    space grows later, with writes, and the re-measures count it)."""
    return -(-row.memory_mib // 1024) * GIB if row.status == DesktopStatus.RUNNING else 0


def snapshot_create(
    *, actor: User, desktop: Desktop, name: str, source_ip: str | None = None
) -> Snapshot:
    """Ask for a snapshot of `desktop` (which `actor` can see): 202, the work is queued."""
    if desktop_role(actor, owner_id=desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may take snapshots.")
    name = _name_clean(name)
    broker_check()
    with transaction.atomic():
        # The owner's row first (as a launch): their requests on all their desktops are
        # checked one at a time, each seeing the others' pending snapshots.
        get_user_model().objects.select_for_update().get(pk=desktop.owner_id)
        row = _steady(desktop, action=ActionName.SNAPSHOT, what="a snapshot")
        _limits_check(row)
        snapshot = Snapshot(
            desktop=row, name=name, created_by=actor, size_bytes=snapshot_expected_bytes(row)
        )
        snapshot.libvirt_name = f"snap-{snapshot.pk.hex}"  # the id exists before the insert
        snapshot.save(force_insert=True)
        audit_record(
            action=AuditVerb.SNAPSHOT_CREATE,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            snapshot=str(snapshot.pk),
            name=name,
        )
        _queue(row, ActionName.SNAPSHOT)
    return snapshot


def snapshot_revert(
    *,
    actor: User,
    desktop: Desktop,
    snapshot_id: UUID | str,
    reason: str = "",
    source_ip: str | None = None,
) -> Snapshot:
    """Ask to take the desktop back to a snapshot. Help-desk staff must give a reason;
    the owner is told live who reverts it and why."""
    role = desktop_role(actor, owner_id=desktop.owner_id)
    reason = reason.strip()
    if role is DesktopRole.HELPDESK and not reason:
        raise ServiceError("Help-desk staff must give a reason to revert a user's desktop.")
    broker_check()
    with transaction.atomic():
        row = _steady(desktop, action=ActionName.SNAPSHOT_REVERT, what="a revert")
        snapshot = _ready_snapshot(row, snapshot_id)
        snapshot_move(snapshot_id=snapshot.pk, old=S.READY, new=S.REVERTING, last_error="")
        audit_record(
            action=AuditVerb.SNAPSHOT_REVERT,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            snapshot=str(snapshot.pk),
            name=snapshot.name,
            role=role.value,
            reason=reason,
        )
        if role is not DesktopRole.OWNER:
            push_owner_notice(
                desktop_id=row.pk,
                text=f"{actor.get_username()} ({role.value}) is reverting {row.name} to "
                f"snapshot '{snapshot.name}'" + (f": {reason}" if reason else "."),
            )
        _queue(row, ActionName.SNAPSHOT_REVERT)
    return snapshot


def snapshot_delete(
    *, actor: User, desktop: Desktop, snapshot_id: UUID | str, source_ip: str | None = None
) -> Snapshot:
    """Ask to delete a snapshot (its space is given back when the work is done)."""
    if desktop_role(actor, owner_id=desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may delete snapshots.")
    broker_check()
    with transaction.atomic():
        row = _steady(desktop, action=ActionName.SNAPSHOT_DELETE, what="deleting a snapshot")
        snapshot = row.snapshots.filter(pk=snapshot_id, status__in=(S.READY, S.ERROR)).first()
        if snapshot is None:
            raise InvalidTransition("That snapshot cannot be deleted now.")
        snapshot_move(snapshot_id=snapshot.pk, old=snapshot.status, new=S.DELETING)
        audit_record(
            action=AuditVerb.SNAPSHOT_DELETE,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            snapshot=str(snapshot.pk),
            name=snapshot.name,
        )
        _queue(row, ActionName.SNAPSHOT_DELETE)
    return snapshot


def _ready_snapshot(row: Desktop, snapshot_id: UUID | str) -> Snapshot:
    snapshot = row.snapshots.filter(pk=snapshot_id).first()
    if snapshot is None or snapshot.status != S.READY:
        raise InvalidTransition("That snapshot is not ready to revert to.")
    return snapshot


def _queue(row: Desktop, action: ActionName) -> None:
    entry = ACTIONS[action]
    Desktop.objects.filter(pk=row.pk).update(progress=entry.name)
    push_desktop_changed(desktop_id=row.pk)
    enqueue_desktop_task(entry, desktop=row)
