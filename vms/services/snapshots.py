"""Snapshots of a desktop's disk: take, list, revert, delete (docs/backups.md).

People's requests (`snapshot_*` below) write a Snapshot row in a pending state with its
audit row and queue the desktop's action task ("snapshot", "snapshot-revert",
"snapshot-delete" in the action table) on commit; the worker functions in
`vms.services.snapshot_work` do the libvirt half. Owners and admins manage a desktop's
snapshots; help-desk staff may only revert, and only with a stated reason, which is
audited and shown to the owner live.
"""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction

from vms.models import Desktop, DesktopStatus, Snapshot, SnapshotStatus
from vms.roles import DesktopRole, desktop_role
from vms.services.actions import ACTIONS, busy_label_of
from vms.services.audit import audit_record
from vms.services.errors import InvalidName, InvalidTransition, QuotaExceeded, ServiceError
from vms.services.events import push_desktop_changed, push_owner_notice
from vms.services.queue import broker_check, enqueue_desktop_task
from vms.services.quotas import effective_quota, usage

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


def snapshot_move(*, snapshot_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Compare-and-set one snapshot's status through SNAPSHOT_TRANSITIONS."""
    if new not in SNAPSHOT_TRANSITIONS[old]:
        raise InvalidTransition(f"A snapshot cannot go from {old} to {new}.")
    return Snapshot.objects.filter(pk=snapshot_id, status=old).update(status=new, **fields) == 1


def _busy(desktop: Desktop) -> bool:
    pending = (S.CREATING, S.REVERTING, S.DELETING)
    return desktop.snapshots.filter(status__in=pending).exists()


def _steady(desktop: Desktop, *, what: str) -> Desktop:
    """The desktop's row locked, refusing states where its disk may not be touched."""
    row = Desktop.objects.select_for_update().select_related("template").get(pk=desktop.pk)
    if row.status not in SNAPSHOT_DESKTOP_STATES or busy_label_of(row.progress):
        raise InvalidTransition(
            f"The desktop is {row.get_status_display().lower()}; {what} is possible when it "
            "is running or stopped and nothing else is under way."
        )
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
    # A snapshot of a running guest holds its memory too: count that before it exists.
    expected_gib = -(-row.memory_mib // 1024) if row.status == DesktopStatus.RUNNING else 0
    if used.max_disk_gib + expected_gib > limits.max_disk_gib:
        raise QuotaExceeded(
            limit="disk (GiB, snapshots included)",
            allowed=limits.max_disk_gib,
            requested=used.max_disk_gib + expected_gib,
        )


def snapshot_create(
    *, actor: User, desktop: Desktop, name: str, source_ip: str | None = None
) -> Snapshot:
    """Ask for a snapshot of `desktop` (which `actor` can see): 202, the work is queued."""
    if desktop_role(actor, owner_id=desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may take snapshots.")
    name = _name_clean(name)
    broker_check()
    with transaction.atomic():
        row = _steady(desktop, what="a snapshot")
        _limits_check(row)
        snapshot = Snapshot(desktop=row, name=name, created_by=actor)
        snapshot.libvirt_name = f"snap-{snapshot.pk.hex}"  # the id exists before the insert
        snapshot.save(force_insert=True)
        audit_record(
            action="snapshot.create",
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            snapshot=str(snapshot.pk),
            name=name,
        )
        _queue(row, "snapshot")
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
        row = _steady(desktop, what="a revert")
        snapshot = _ready_snapshot(row, snapshot_id)
        snapshot_move(snapshot_id=snapshot.pk, old=S.READY, new=S.REVERTING, last_error="")
        audit_record(
            action="snapshot.revert",
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
        _queue(row, "snapshot-revert")
    return snapshot


def snapshot_delete(
    *, actor: User, desktop: Desktop, snapshot_id: UUID | str, source_ip: str | None = None
) -> Snapshot:
    """Ask to delete a snapshot (its space is given back when the work is done)."""
    if desktop_role(actor, owner_id=desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may delete snapshots.")
    broker_check()
    with transaction.atomic():
        row = _steady(desktop, what="deleting a snapshot")
        snapshot = row.snapshots.filter(pk=snapshot_id, status__in=(S.READY, S.ERROR)).first()
        if snapshot is None:
            raise InvalidTransition("That snapshot cannot be deleted now.")
        snapshot_move(snapshot_id=snapshot.pk, old=snapshot.status, new=S.DELETING)
        audit_record(
            action="snapshot.delete",
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            snapshot=str(snapshot.pk),
            name=snapshot.name,
        )
        _queue(row, "snapshot-delete")
    return snapshot


def _ready_snapshot(row: Desktop, snapshot_id: UUID | str) -> Snapshot:
    snapshot = row.snapshots.filter(pk=snapshot_id).first()
    if snapshot is None or snapshot.status != S.READY:
        raise InvalidTransition("That snapshot is not ready to revert to.")
    return snapshot


def _queue(row: Desktop, action: str) -> None:
    entry = ACTIONS[action]
    Desktop.objects.filter(pk=row.pk).update(progress=entry.name)
    push_desktop_changed(desktop_id=row.pk)
    enqueue_desktop_task(entry, desktop=row)
