"""Backups and restores: people's requests, the schedule, and the backup selectors.

A request writes a Backup row (`queued`) and its audit row and queues the desktop's
"backup" action on commit; `vms.services.disks.backup_work` does the copying. Only `ready`
backups are listed as backups and can be restored; one under way is shown with its
progress and can be cancelled. See docs/backups.md.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from vms.models import (
    Backup,
    BackupStatus,
    Desktop,
    DesktopStatus,
    Restore,
    RestoreStatus,
    RestoreTarget,
    Template,
)
from vms.roles import DesktopRole, desktop_role, sees_all_desktops
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import InvalidTransition, NotAssigned, QuotaExceeded, ServiceError
from vms.services.core.queue import broker_check, enqueue_desktop_task
from vms.services.core.state_machine import StateMachine
from vms.services.desktops.actions import (
    ACTIONS,
    ActionName,
    disk_work_check,
)
from vms.services.desktops.events import push_desktop_changed, push_owner_notice
from vms.services.desktops.quotas import effective_quota, usage
from vms.services.disks.copies import copy_names

log = logging.getLogger(__name__)
B = BackupStatus
D = DesktopStatus
R = RestoreStatus
MANAGERS = frozenset({DesktopRole.OWNER, DesktopRole.ADMIN})
UNDER_WAY = (B.QUEUED, B.RUNNING, B.CANCELLING)
BACKUP_TRANSITIONS: dict[str, frozenset[str]] = {
    B.QUEUED: frozenset({B.RUNNING, B.CANCELLED, B.FAILED}),
    B.RUNNING: frozenset({B.READY, B.FAILED, B.CANCELLING}),
    B.CANCELLING: frozenset({B.CANCELLED, B.FAILED, B.READY}),
    B.READY: frozenset({B.EXPIRED}),
    B.FAILED: frozenset(),
    B.CANCELLED: frozenset(),
    B.EXPIRED: frozenset(),
}


RESTORING = (R.QUEUED, R.RUNNING, R.CANCELLING)
RESTORE_TRANSITIONS: dict[str, frozenset[str]] = {
    R.QUEUED: frozenset({R.RUNNING, R.CANCELLED, R.FAILED}),
    R.RUNNING: frozenset({R.DONE, R.FAILED, R.CANCELLING}),
    R.CANCELLING: frozenset({R.CANCELLED, R.FAILED}),
    R.DONE: frozenset(),
    R.FAILED: frozenset(),
    R.CANCELLED: frozenset(),
}


BACKUP_STATES = StateMachine(
    model=Backup,
    states=B,
    table=BACKUP_TRANSITIONS,
    what="A backup",
    terminal=frozenset({B.FAILED, B.CANCELLED, B.EXPIRED}),
)
RESTORE_STATES = StateMachine(
    model=Restore,
    states=R,
    table=RESTORE_TRANSITIONS,
    what="A restore",
    terminal=frozenset({R.DONE, R.FAILED, R.CANCELLED}),
)


def restore_move(*, restore_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Compare-and-set one restore's status through RESTORE_TRANSITIONS."""
    return RESTORE_STATES.compare_and_set(pk=restore_id, old=old, new=new, **fields)


def backup_move(*, backup_id: UUID | str, old: str, new: str, **fields: object) -> bool:
    """Compare-and-set one backup's status through BACKUP_TRANSITIONS."""
    return BACKUP_STATES.compare_and_set(pk=backup_id, old=old, new=new, **fields)


# Only root lists the backup folders, but the guests' QEMU (user libvirt-qemu) must pass
# through them: it writes a push backup's file itself, and reads a backup as the backing
# file of a restore. libvirt hands it that one file (0600) for the job's time only.
BACKUP_DIR_MODE = 0o711


def _made(folder: Path) -> Path:
    folder.mkdir(mode=BACKUP_DIR_MODE, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o777 != BACKUP_DIR_MODE:
        folder.chmod(BACKUP_DIR_MODE)  # made before (0700), or under another umask
    return folder


def backup_root() -> Path:
    """BACKUP_DIR, made if missing (listed by root only: backups hold whole disks)."""
    return _made(Path(settings.BACKUP_DIR))


def backup_folder(desktop_id: UUID | str) -> Path:
    return _made(backup_root() / str(desktop_id))


def backup_path(backup: Backup) -> Path:
    """Where a ready backup's file is (its chain's parents sit next to it)."""
    return backup_root() / str(backup.desktop_id) / backup.file_name


def backups_listed(*, desktop: Desktop) -> QuerySet[Backup]:
    """A desktop's backups as people see them: ready ones, and the one under way."""
    return desktop.backups.filter(status__in=(B.READY, *UNDER_WAY)).order_by("-created_at")


def backups_visible_to(*, user: User) -> QuerySet[Backup]:
    """Backups `user` may see: of their own desktops, deleted ones included (a backup
    outlives its desktop: "restore to a new desktop"); help-desk and admins see all.
    Another user's answer 404."""
    rows = Backup.objects.select_related("desktop__owner", "desktop__template")
    if not user.is_authenticated:
        return rows.none()
    return rows if sees_all_desktops(user) else rows.filter(desktop__owner=user)


def restores_under_way(*, desktop: Desktop) -> QuerySet[Restore]:
    """The restores into `desktop` that are not over (one at most), with their progress."""
    return desktop.restores.filter(status__in=RESTORING).select_related("backup")


def restores_visible_to(*, user: User) -> QuerySet[Restore]:
    """Restores `user` may see: into their own desktops (help-desk and admins: all)."""
    rows = Restore.objects.select_related("desktop__owner", "backup")
    if not user.is_authenticated:
        return rows.none()
    return rows if sees_all_desktops(user) else rows.filter(desktop__owner=user)


def backup_request(
    *,
    actor: User | None,
    desktop: Desktop,
    scheduled: bool = False,
    source_ip: str | None = None,
) -> Backup:
    """Queue a backup of `desktop` (incremental when its last checkpoint still exists)."""
    if actor is not None and desktop_role(actor, owner_id=desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may back it up.")
    broker_check()
    with transaction.atomic():
        # The owner's row first (as a launch), so that their requests are checked one at a
        # time against their limits; then the desktop's.
        get_user_model().objects.select_for_update().get(pk=desktop.owner_id)
        row = Desktop.objects.select_for_update().get(pk=desktop.pk)
        disk_work_check(row, action=ActionName.BACKUP, what="a backup")
        if row.backups.filter(status__in=UNDER_WAY).exists():
            raise InvalidTransition("A backup of this desktop is already under way.")
        backup_limits_check(desktop=row, scheduled=scheduled)
        backup = Backup.objects.create(desktop=row, created_by=actor, scheduled=scheduled)
        audit_record(
            action=AuditVerb.BACKUP_REQUEST,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            backup=str(backup.pk),
            scheduled=scheduled,
        )
        enqueue_desktop_task(ACTIONS[ActionName.BACKUP], desktop=row)
    return backup


def backup_limits_check(*, desktop: Desktop, scheduled: bool) -> None:
    """Refuse (QuotaExceeded, 409) a backup over the owner's limits: a person's request
    beyond BACKUPS_PER_USER_PER_DAY in the last 24 hours (the template's schedule is the
    admin's and is not counted), or a backup the owner's disk quota has no room for (it
    counts their backups; a new one may need as much as the desktop's whole disk). The
    caller holds the owner's row lock."""
    owner = desktop.owner
    if not scheduled:
        since = timezone.now() - timedelta(days=1)
        asked = Backup.objects.filter(
            desktop__owner=owner, scheduled=False, created_at__gte=since
        ).count()
        if asked >= settings.BACKUPS_PER_USER_PER_DAY:
            raise QuotaExceeded(
                limit="backups requested in 24 hours",
                allowed=settings.BACKUPS_PER_USER_PER_DAY,
                requested=asked + 1,
            )
    limits, used = effective_quota(user=owner), usage(user=owner)
    if used.max_disk_gib + desktop.disk_gib > limits.max_disk_gib:
        raise QuotaExceeded(
            limit="disk (GiB, snapshots and backups included)",
            allowed=limits.max_disk_gib,
            requested=used.max_disk_gib + desktop.disk_gib,
        )


def backup_cancel(*, actor: User, backup: Backup, source_ip: str | None = None) -> None:
    """Cancel a backup under way; its partial file is removed, nothing is listed."""
    if desktop_role(actor, owner_id=backup.desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may cancel its backup.")
    with transaction.atomic():
        moved = backup_move(backup_id=backup.pk, old=B.QUEUED, new=B.CANCELLED) or (
            backup_move(backup_id=backup.pk, old=B.RUNNING, new=B.CANCELLING)
        )
        if not moved:
            raise InvalidTransition("That backup is not under way.")
        audit_record(
            action=AuditVerb.BACKUP_CANCEL,
            actor=actor,
            desktop=backup.desktop,
            source_ip=source_ip,
            backup=str(backup.pk),
        )


def backup_restore(
    *, actor: User, backup: Backup, target: str, source_ip: str | None = None
) -> Desktop:
    """Restore a ready backup: `new` launches a new desktop from it (the quota applies),
    `in_place` replaces the desktop's disk (its snapshots go; a running one is stopped)."""
    if desktop_role(actor, owner_id=backup.desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may restore it.")
    if backup.status != B.READY:
        raise InvalidTransition("Only a finished backup can be restored.")
    if target not in ("new", "in_place"):
        raise ServiceError('target must be "new" or "in_place".')
    broker_check()
    if target == "new":
        return _restore_new(actor=actor, backup=backup, source_ip=source_ip)
    return _restore_in_place(actor=actor, backup=backup, source_ip=source_ip)


def _restore_new(*, actor: User, backup: Backup, source_ip: str | None) -> Desktop:
    from vms.services.desktops.requests import desktop_launch_insert

    source = backup.desktop
    with transaction.atomic():
        # The launch's own checks, for the owner: an enabled template still assigned to
        # them, and room in their quota (under their row's lock).
        try:
            desktop = desktop_launch_insert(
                user=source.owner,
                template_id=source.template_id,
                name=f"{source.name} (restored)"[:100],
            )
        except NotAssigned as exc:
            raise NotAssigned(
                f"The template {source.template.name} is disabled or no longer assigned to "
                f"{source.owner.get_username()}; its backups cannot become new desktops."
            ) from exc
        Desktop.objects.filter(pk=desktop.pk).update(
            restored_from=backup, base_image_path=source.base_image_path
        )
        desktop.restored_from = backup
        restore = _restore_row(
            actor=actor, backup=backup, desktop=desktop, target=RestoreTarget.NEW
        )
        audit_record(
            action=AuditVerb.BACKUP_RESTORE,
            actor=actor,
            desktop=desktop,
            source_ip=source_ip,
            backup=str(backup.pk),
            restore=str(restore.pk),
            target="new",
            source=str(source.pk),
        )
        push_desktop_changed(desktop_id=desktop.pk)
        enqueue_desktop_task(ACTIONS[ActionName.PROVISION], desktop=desktop)
    return desktop


def _restore_row(*, actor: User, backup: Backup, desktop: Desktop, target: str) -> Restore:
    """The restore's row: a new desktop's copy is its own disk; an in-place one goes next
    to the old disk (swapped when whole)."""
    restore = Restore(backup=backup, desktop=desktop, target=target, created_by=actor)
    copy_volume, restore.job_name = copy_names(token=f"restore-{restore.pk}")
    restore.volume_name = desktop.volume_name if target == RestoreTarget.NEW else copy_volume
    restore.save(force_insert=True)
    return restore


def _restore_in_place(*, actor: User, backup: Backup, source_ip: str | None) -> Desktop:
    with transaction.atomic():
        row = Desktop.objects.select_for_update().get(pk=backup.desktop_id)
        disk_work_check(
            row,
            action=ActionName.RESTORE,
            what="a restore",
            refusal="The desktop is busy; restore it when it is running or stopped.",
        )
        if row.backups.filter(status__in=UNDER_WAY).exists():
            raise InvalidTransition("A backup of this desktop is under way; restore after it.")
        Desktop.objects.filter(pk=row.pk).update(progress=ActionName.RESTORE)
        restore = _restore_row(
            actor=actor, backup=backup, desktop=row, target=RestoreTarget.IN_PLACE
        )
        audit_record(
            action=AuditVerb.BACKUP_RESTORE,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            backup=str(backup.pk),
            restore=str(restore.pk),
            target="in_place",
        )
        if desktop_role(actor, owner_id=row.owner_id) is not DesktopRole.OWNER:
            push_owner_notice(
                desktop_id=row.pk,
                text=f"{actor.get_username()} is restoring "
                f"{row.name} from the backup of {backup.created_at:%Y-%m-%d %H:%M}.",
            )
        push_desktop_changed(desktop_id=row.pk)
        enqueue_desktop_task(ACTIONS[ActionName.RESTORE], desktop=row)
    return row


def restore_cancel(*, actor: User, restore: Restore, source_ip: str | None = None) -> None:
    """Cancel a restore under way. In place: the copy stops and is removed, the desktop
    keeps its disk. To a new desktop: that desktop is deleted (it was only the restore)."""
    from vms.services.desktops.requests import desktop_act

    if desktop_role(actor, owner_id=restore.desktop.owner_id) not in MANAGERS:
        raise PermissionDenied("Only the desktop's owner or an admin may cancel its restore.")
    with transaction.atomic():
        moved = restore_move(restore_id=restore.pk, old=R.QUEUED, new=R.CANCELLED) or (
            restore_move(restore_id=restore.pk, old=R.RUNNING, new=R.CANCELLING)
        )
        if not moved:
            raise InvalidTransition("That restore is not under way.")
        audit_record(
            action=AuditVerb.BACKUP_RESTORE_CANCEL,
            actor=actor,
            desktop=restore.desktop,
            source_ip=source_ip,
            restore=str(restore.pk),
        )
        if restore.target == RestoreTarget.NEW:
            desktop_act(
                actor=actor, desktop=restore.desktop, action=ActionName.DELETE, source_ip=source_ip
            )
        push_desktop_changed(desktop_id=restore.desktop_id)


def backups_due() -> list[Desktop]:
    """Desktops whose template backs them up every N hours and whose last backup (ready
    or under way) is older than that."""
    due = []
    now = timezone.now()
    for template in Template.objects.filter(backup_every_hours__gt=0):
        cutoff = now - timedelta(hours=template.backup_every_hours)
        for desktop in template.desktops.filter(status__in=ACTIONS[ActionName.BACKUP].sources):
            recent = desktop.backups.filter(
                status__in=(B.READY, *UNDER_WAY), created_at__gte=cutoff
            ).exists()
            if not recent:
                due.append(desktop)
    return due


def backups_round() -> int:
    """The beat's round: queue the scheduled backups that are due; how many."""
    queued = 0
    for desktop in backups_due():
        try:
            backup_request(actor=None, desktop=desktop, scheduled=True)
            queued += 1
        except ServiceError as exc:  # busy, or over its owner's disk quota: skipped
            log.info("scheduled backup of desktop %s skipped: %s", desktop.pk, exc.message)
    return queued
