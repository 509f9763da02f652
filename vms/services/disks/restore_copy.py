"""Copying a backup into a restore's volume (the slow, checked part of every restore).

A restore to a new desktop copies while the desktop is provisioned
(`restored_volume_path`, called by `vms.services.disks.volumes` for the desktop's
disk); an in-place restore copies next to the old disk first, then swaps
(`vms.services.disks.backup_work.desktop_restore`). Both follow the copy into the
restore's progress, stop when it is cancelled or its desktop deleted, and record how it
ended (`restore_ended`).
"""

from __future__ import annotations

import time

from django.db import transaction
from django.utils import timezone

from vms.hypervisor import HypervisorError, qemuimg
from vms.models import (
    BackupStatus,
    Desktop,
    DesktopStatus,
    Host,
    Restore,
    RestoreStatus,
    RestoreTarget,
)
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.desktops.events import push_desktop_changed
from vms.services.disks.backups import RESTORING, backup_path, restore_move
from vms.services.disks.copies import CopyCancelled, copy_names, disk_copy_run
from vms.services.fleet.hosts import hypervisor_for

B = BackupStatus
R = RestoreStatus


def restored_volume_path(desktop: Desktop, host: Host) -> str:
    """The disk of a desktop made from its `restored_from` backup: copied now by its
    restore (with progress; a cancel raises CopyCancelled, the copy removed), or the disk
    an earlier run made."""
    restores = desktop.restores.filter(status__in=RESTORING, target=RestoreTarget.NEW)
    restore = restores.order_by("created_at").first()
    if restore is None:
        info = hypervisor_for(host).volume_info(pool=host.storage_pool, name=desktop.volume_name)
        return info.path if info is not None else _copy_again(desktop, host)
    try:
        path, seconds = restore_copy(restore, host)
    except (HypervisorError, CopyCancelled) as exc:
        restore_ended(restore, exc)
        raise
    with transaction.atomic():
        if restore_move(
            restore_id=restore.pk, old=R.RUNNING, new=R.DONE, **restore_done_fields(seconds)
        ):
            restore_recorded(desktop, restore)
    return path


def _copy_again(desktop: Desktop, host: Host) -> str:
    """A restored desktop whose disk was thrown away (a non-persistent one, when it
    stopped) starts again from its backup, as another starts again from its base."""
    backup = desktop.restored_from
    if backup is None or backup.status != B.READY:
        raise HypervisorError("the backup this desktop was restored from is gone", permanent=True)
    info = disk_copy_run(
        host=host,
        source_path=str(backup_path(backup)),
        volume=desktop.volume_name,
        job=copy_names(token=f"again-{desktop.pk}")[1],
        progress=lambda percent: None,
        cancelled=lambda: False,
    )
    return info.path


def restore_done_fields(seconds: float) -> dict[str, object]:
    return {"progress": 100, "finished_at": timezone.now(), "seconds": round(seconds, 2)}


def restore_copy(restore: Restore, host: Host) -> tuple[str, float]:
    """Check the backup's chain (a damaged backup changes nothing), then copy it into the
    restore's volume; the copy's path and how long it took."""
    if restore.status == R.QUEUED and not restore_move(
        restore_id=restore.pk, old=R.QUEUED, new=R.RUNNING
    ):
        raise CopyCancelled("cancelled before it started")
    started = time.monotonic()
    backup = restore.backup
    for link in qemuimg.image_chain(str(backup_path(backup))):
        qemuimg.image_check(str(link["filename"]))
    rows = Restore.objects.filter(pk=restore.pk)
    info = disk_copy_run(
        host=host,
        source_path=str(backup_path(backup)),
        volume=restore.volume_name,
        job=restore.job_name,
        progress=lambda percent: rows.update(progress=percent),
        cancelled=lambda: _restore_stopped(restore),
    )
    return info.path, time.monotonic() - started


def _restore_stopped(restore: Restore) -> bool:
    """Whether the restore should stop: cancelled, or its desktop deleted meanwhile."""
    if Restore.objects.filter(pk=restore.pk, status=R.CANCELLING).exists():
        return True
    gone = (DesktopStatus.DELETING, DesktopStatus.DELETED)
    return Desktop.objects.filter(pk=restore.desktop_id, status__in=gone).exists()


def restore_ended(restore: Restore, exc: Exception) -> None:
    """A restore that did not finish: cancelled when asked, else failed with the reason."""
    message = exc.message if isinstance(exc, HypervisorError) else "cancelled"
    with transaction.atomic():
        current = Restore.objects.filter(pk=restore.pk).values_list("status", flat=True).first()
        if current not in (R.RUNNING, R.CANCELLING):
            return  # cancelled before it started: that was recorded then
        new = R.CANCELLED if current == R.CANCELLING else R.FAILED
        if new == R.FAILED and isinstance(exc, CopyCancelled):
            message = "its desktop was deleted meanwhile"
        restore_move(
            restore_id=restore.pk, old=current, new=new, last_error=message,
            finished_at=timezone.now(),
        )  # fmt: skip
        audit_record(
            action=AuditVerb(f"backup.restore_{new}"),
            desktop=restore.desktop,
            restore=str(restore.pk),
            message=message,
        )
        push_desktop_changed(desktop_id=restore.desktop_id)


def restore_recorded(desktop: Desktop, restore: Restore) -> None:
    audit_record(
        action=AuditVerb.BACKUP_RESTORED,
        desktop=desktop,
        backup=str(restore.backup_id),
        restore=str(restore.pk),
        target=restore.target,
    )
    push_desktop_changed(desktop_id=desktop.pk)
