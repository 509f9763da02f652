"""Worker-side backup and restore work (the action table's "backup" and "restore").

A backup is written by libvirt to ``.<id>.partial`` in the desktop's backup folder; when
the job ends it is linked to its parent (incremental), checked with ``qemu-img check``,
compared with the source disk when the source was quiescent (a stopped desktop's QEMU ran
paused), and only then renamed to ``<id>.qcow2`` and marked ready. Any failure (or a
cancel) aborts the job, drops the checkpoint it made and removes the partial file. A
worker killed mid-backup leaves its row `running` and the lock free:
`backups_reconcile` then does the same clean-up, and removes the portal's own orphaned
files (`backup_strays_remove`: its names only, never through a link, not recent ones).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from vms.hypervisor import Hypervisor, HypervisorError, qemuimg
from vms.models import (
    Backup,
    BackupStatus,
    Desktop,
    DesktopStatus,
    Restore,
    RestoreStatus,
    RestoreTarget,
    Snapshot,
    SnapshotStatus,
)
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.locks import DesktopBusy, desktop_lock
from vms.services.core.long_jobs import LongJobKind, long_job_register
from vms.services.desktops import transitions
from vms.services.desktops.actions import ActionName
from vms.services.desktops.events import push_desktop_changed
from vms.services.desktops.lifecycle import desktop_domain_prepare
from vms.services.desktops.worker import (
    desktop_fail,
    desktop_hypervisor,
    desktop_progress_clear,
    desktop_worker,
)
from vms.services.disks.backups import (
    RESTORING,
    UNDER_WAY,
    backup_folder,
    backup_move,
    backup_path,
    backup_root,
    restore_move,
)
from vms.services.disks.copies import CopyCancelled, disk_copy_discard
from vms.services.disks.restore_copy import (
    restore_copy,
    restore_done_fields,
    restore_ended,
    restore_recorded,
)
from vms.services.disks.volumes import desktop_volume_path

log = logging.getLogger(__name__)
B = BackupStatus
D = DesktopStatus
R = RestoreStatus
POLL_S = 0.25
PARTIAL = ".partial"
# An orphaned file in BACKUP_DIR is removed only when nothing wrote it for this long: a
# running job rewrites its partial file continuously.
STRAY_GRACE_S = 3600


class BackupCancelled(Exception):
    """Someone cancelled the backup while it ran."""


def _partial(backup: Backup) -> Path:
    return backup_folder(backup.desktop_id) / f".{backup.pk}{PARTIAL}"


def _parent_for(desktop: Desktop, hypervisor: Hypervisor) -> Backup | None:
    """The last ready backup, if its checkpoint still exists (else this one is full)."""
    last = desktop.backups.filter(status=B.READY).order_by("-created_at").first()
    if last is None or not last.checkpoint:
        return None
    if last.checkpoint not in hypervisor.checkpoint_names(name=desktop.domain_name):
        return None
    return last


@desktop_worker()
def desktop_backup(desktop: Desktop) -> None:
    """Run the desktop's queued backup (one at a time), then apply retention."""
    for backup in desktop.backups.filter(status=B.QUEUED).order_by("created_at"):
        if backup_move(backup_id=backup.pk, old=B.QUEUED, new=B.RUNNING):
            _backup(desktop, backup)
    retention_apply(desktop=desktop)


def _backup(desktop: Desktop, backup: Backup) -> None:
    hypervisor = desktop_hypervisor(desktop)
    partial = _partial(backup)
    checkpoint = f"bk-{backup.pk.hex}"
    Backup.objects.filter(pk=backup.pk).update(checkpoint=checkpoint)
    started_at = time.monotonic()
    try:
        parent = _parent_for(desktop, hypervisor)
        quiescent = hypervisor.backup_start(
            name=desktop.domain_name,
            target_path=str(partial),
            checkpoint=checkpoint,
            incremental_from=parent.checkpoint if parent else None,
        )
        total = _wait(desktop, backup, hypervisor)
        if quiescent:
            hypervisor.backup_finish(name=desktop.domain_name)
        _verify(desktop, partial, parent=parent, quiescent=quiescent)
    except (HypervisorError, BackupCancelled) as exc:
        _undo(desktop, backup, hypervisor, partial, checkpoint)
        _ended(backup, exc)
        if isinstance(exc, HypervisorError) and not exc.permanent:
            raise
        return
    _commit(
        desktop,
        backup,
        partial,
        parent=parent,
        total=total,
        seconds=time.monotonic() - started_at,
        compared=quiescent,
    )


def _wait(desktop: Desktop, backup: Backup, hypervisor: Hypervisor) -> int:
    """Follow the job to its end, writing its progress; cancel when asked."""
    while True:
        job = hypervisor.backup_job(name=desktop.domain_name)
        if not job.active:
            if not job.ok:
                raise HypervisorError(f"the backup job failed: {job.error}", permanent=True)
            return job.total_bytes
        percent = int(100 * job.processed_bytes / job.total_bytes) if job.total_bytes else 0
        Backup.objects.filter(pk=backup.pk).update(progress=min(percent, 99))
        if Backup.objects.filter(pk=backup.pk, status=B.CANCELLING).exists():
            raise BackupCancelled("cancelled")
        time.sleep(POLL_S)


def _verify(desktop: Desktop, partial: Path, *, parent: Backup | None, quiescent: bool) -> None:
    if parent is not None:
        qemuimg.image_link(str(partial), parent=str(backup_path(parent)))
    for link in qemuimg.image_chain(str(partial)):
        qemuimg.image_check(str(link["filename"]))
    if quiescent:
        source = desktop_volume_path(desktop)
        if not qemuimg.image_compare(str(partial), source):
            raise HypervisorError("the backup differs from the desktop's disk", permanent=True)


def _commit(
    desktop: Desktop,
    backup: Backup,
    partial: Path,
    *,
    parent: Backup | None,
    total: int,
    seconds: float,
    compared: bool,
) -> None:
    final = partial.with_name(f"{backup.pk}.qcow2")
    written = partial.stat().st_blocks * 512
    os.replace(partial, final)  # atomic: either the partial or the whole backup
    with transaction.atomic():
        if not backup_move(
            backup_id=backup.pk,
            old=B.RUNNING,
            new=B.READY,
            parent=parent,
            file_name=final.name,
            bytes_written=written,
            virtual_bytes=total,
            progress=100,
            finished_at=timezone.now(),
            seconds=round(seconds, 2),
        ):
            final.unlink(missing_ok=True)  # cancelled at the last moment
            backup_move(backup_id=backup.pk, old=B.CANCELLING, new=B.CANCELLED)
            return
        audit_record(
            action=AuditVerb.BACKUP_READY,
            desktop=desktop,
            backup=str(backup.pk),
            incremental=parent is not None,
            bytes_written=written,
            seconds=round(seconds, 2),
            compared=compared,
        )
        push_desktop_changed(desktop_id=desktop.pk)


def _undo(
    desktop: Desktop, backup: Backup, hypervisor: Hypervisor, partial: Path, checkpoint: str
) -> None:
    # Each step on its own: a job that ended meanwhile makes libvirt refuse the abort
    # ("backup job data missing"), and the paused QEMU must still be powered off.
    steps: tuple[Callable[[], None], ...] = (
        lambda: hypervisor.backup_abort(name=desktop.domain_name, checkpoint=checkpoint),
        lambda: hypervisor.backup_finish(name=desktop.domain_name),
    )
    for step in steps:
        try:
            step()
        except HypervisorError as exc:
            log.warning("clean-up of backup %s: %s", backup.pk, exc.message)
    partial.unlink(missing_ok=True)
    partial.with_name(f"{backup.pk}.qcow2").unlink(missing_ok=True)


def _ended(backup: Backup, exc: Exception) -> None:
    message = exc.message if isinstance(exc, HypervisorError) else "cancelled"
    with transaction.atomic():
        current = Backup.objects.filter(pk=backup.pk).values_list("status", flat=True).first()
        new = B.CANCELLED if current == B.CANCELLING else B.FAILED
        if current in (B.RUNNING, B.CANCELLING):
            backup_move(
                backup_id=backup.pk,
                old=current,
                new=new,
                last_error=message,
                finished_at=timezone.now(),
            )
        audit_record(
            action=AuditVerb(f"backup.{new}"),
            desktop=backup.desktop,
            backup=str(backup.pk),
            message=message,
        )


def retention_apply(*, desktop: Desktop) -> int:
    """Keep the template's last N ready backups: the oldest ones go, their data merged
    into the backup resting on them first (which becomes the chain's new start)."""
    keep = desktop.template.backup_keep
    ready = list(desktop.backups.filter(status=B.READY).order_by("created_at"))
    removed = 0
    for oldest in ready[: max(len(ready) - keep, 0)]:
        child = Backup.objects.filter(parent=oldest, status=B.READY).first()
        if child is not None:
            grand = oldest.parent
            qemuimg.image_rebase_away(
                str(backup_path(child)), new_parent=str(backup_path(grand)) if grand else None
            )
            Backup.objects.filter(pk=child.pk).update(parent=grand)
        backup_path(oldest).unlink(missing_ok=True)
        with transaction.atomic():
            backup_move(backup_id=oldest.pk, old=B.READY, new=B.EXPIRED)
            audit_record(action=AuditVerb.BACKUP_EXPIRED, desktop=desktop, backup=str(oldest.pk))
        removed += 1
    return removed


def backups_expire_deleted(*, now: datetime | None = None) -> int:
    """The backups of desktops deleted more than BACKUP_KEEP_DAYS_AFTER_DELETE days ago
    expire (their files removed, their rows kept as `expired` for the record), unless a
    restore from them is under way. How many expired."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.BACKUP_KEEP_DAYS_AFTER_DELETE)
    old = Backup.objects.filter(
        status=B.READY, desktop__status=DesktopStatus.DELETED, desktop__deleted_at__lt=cutoff
    ).exclude(desktop__backups__restores__status__in=RESTORING)  # a chain in use stays whole
    expired = 0
    rows = list(old.select_related("desktop"))
    for backup in rows:  # the whole chain goes: the order does not matter
        backup_path(backup).unlink(missing_ok=True)
        with transaction.atomic():
            if backup_move(backup_id=backup.pk, old=B.READY, new=B.EXPIRED):
                audit_record(
                    action=AuditVerb.BACKUP_EXPIRED,
                    desktop=backup.desktop,
                    backup=str(backup.pk),
                    reason="desktop deleted",
                )
                expired += 1
    for desktop_id in {backup.desktop_id for backup in rows}:
        _remove_if_empty(backup_root() / str(desktop_id))
    return expired


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def backups_reconcile() -> int:
    """Clean up after killed workers, backups and restores (the beat runs each through
    the long-job registry); how many it failed."""
    return _backups_cleanup() + _restores_reconcile()


def _backups_cleanup() -> int:
    """A backup `running` whose desktop lock is free has no worker; abort its job, drop
    its checkpoint and files, mark it failed. Then remove files in BACKUP_DIR that no
    ready backup owns. Returns how many backups it failed."""
    failed = 0
    for backup in Backup.objects.filter(status__in=(B.RUNNING, B.CANCELLING)).select_related(
        "desktop__host"
    ):
        try:
            with desktop_lock(backup.desktop_id, wait_s=0.5):
                _undo(
                    backup.desktop,
                    backup,
                    desktop_hypervisor(backup.desktop),
                    _partial(backup),
                    backup.checkpoint,
                )
                _ended(backup, HypervisorError("interrupted (its worker stopped)", permanent=True))
                failed += 1
        except DesktopBusy:
            continue  # a worker is on it
    backup_strays_remove()
    return failed


def backup_strays_remove(*, now: float | None = None) -> list[Path]:
    """Remove the portal's own orphans from BACKUP_DIR, and nothing else; the paths
    removed. A file goes only when all of this holds:

    - it is a regular file (not a symlink, which is never followed nor removed) directly
      in a real folder (not a symlink) of BACKUP_DIR named by a UUID (a desktop's folder);
    - its name is one the portal writes: ``<backup id>.qcow2`` or ``.<backup id>.partial``;
    - that backup is neither ready (a ready one's file is its own) nor under way;
    - it was not written in the last STRAY_GRACE_S seconds (a backup requested after the
      rows were read, whose job has just started writing, or a file just renamed).

    Anything else under BACKUP_DIR (other names, other folders, links) is left alone."""
    now = time.time() if now is None else now
    # Under way first, then ready: a backup that becomes ready in between is in one or
    # the other (its file is renamed before its row moves).
    busy = {
        str(pk) for pk in Backup.objects.filter(status__in=UNDER_WAY).values_list("pk", flat=True)
    }
    owned = {
        (str(d), f)
        for d, f in Backup.objects.filter(status=B.READY).values_list("desktop_id", "file_name")
    }
    removed = []
    for folder in _portal_folders(backup_root()):
        with os.scandir(folder) as entries:
            for entry in entries:
                backup_id = _backup_id_of(entry.name)
                if backup_id is None or not entry.is_file(follow_symlinks=False):
                    continue
                if (folder.name, entry.name) in owned or backup_id in busy:
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime < STRAY_GRACE_S:
                    continue
                log.info("removing orphaned backup file %s", entry.path)
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def _portal_folders(root: Path) -> list[Path]:
    """BACKUP_DIR's real (not linked) folders named by a UUID: the desktops' folders."""
    with os.scandir(root) as entries:
        return [
            Path(entry.path)
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and _uuid_or_none(entry.name) is not None
        ]


def _backup_id_of(name: str) -> str | None:
    """The backup id in a file name the portal writes (``<id>.qcow2``, ``.<id>.partial``)."""
    if name.endswith(".qcow2"):
        return _uuid_or_none(name.removesuffix(".qcow2"))
    if name.startswith(".") and name.endswith(PARTIAL):
        return _uuid_or_none(name[1:].removesuffix(PARTIAL))
    return None


def _uuid_or_none(text: str) -> str | None:
    try:
        parsed = UUID(text)
    except ValueError:
        return None
    return text if str(parsed) == text else None


# --- restore -------------------------------------------------------------------------------


@desktop_worker(busy=ActionName.RESTORE)
def desktop_restore(desktop: Desktop) -> None:
    """Replace the desktop's disk with its queued in-place restore's copy. The slow part
    (check and copy, next to the old disk) runs first: if it fails or is cancelled, the
    desktop keeps its disk and says why."""
    queued = desktop.restores.filter(status=R.QUEUED, target=RestoreTarget.IN_PLACE)
    for restore in queued.order_by("created_at"):
        _restore_in_place(desktop, restore)


def _restore_in_place(desktop: Desktop, restore: Restore) -> None:
    assert desktop.host is not None
    try:
        _path, seconds = restore_copy(restore, desktop.host)
    except (HypervisorError, CopyCancelled) as exc:
        # A transient error fails the restore too: its copy is gone, and the owner can
        # simply ask again (a retried task would find no queued restore).
        restore_ended(restore, exc)
        if isinstance(exc, HypervisorError):
            Desktop.objects.filter(pk=desktop.pk).update(
                last_error=f"Restore failed ({exc.message}); the desktop kept its disk."
            )
        return
    old_volume = desktop.volume_name
    if not _swap_disk(desktop, restore, seconds):
        disk_copy_discard(host=desktop.host, volume=restore.volume_name, job=restore.job_name)
        restore_ended(restore, CopyCancelled("cancelled"))
        return
    hypervisor = desktop_hypervisor(desktop)
    hypervisor.delete_volume(pool=desktop.host.storage_pool, name=old_volume)
    hypervisor.define_domain(desktop_domain_prepare(desktop))


def _swap_disk(desktop: Desktop, restore: Restore, seconds: float) -> bool:
    """Make the whole, checked copy the desktop's disk, unless the restore was cancelled
    at the last moment (False). The restore's row is locked meanwhile, so a cancel either
    came before (nothing changes) or finds the restore done."""
    with transaction.atomic():
        row = Restore.objects.select_for_update().get(pk=restore.pk)
        target = Desktop.objects.select_for_update().get(pk=desktop.pk)
        if row.status != R.RUNNING or target.status not in (D.RUNNING, D.STOPPED):
            return False  # cancelled, or the desktop is being deleted: the copy goes
        # The domain goes with its snapshot and checkpoint metadata (a running guest is
        # powered off first); it is defined again over the new disk by the caller.
        desktop_hypervisor(desktop).undefine(name=desktop.domain_name)
        restore_move(
            restore_id=restore.pk, old=R.RUNNING, new=R.DONE, **restore_done_fields(seconds)
        )
        Desktop.objects.filter(pk=desktop.pk).update(
            volume_name=restore.volume_name, restored_from=restore.backup, last_error=""
        )
        desktop.volume_name, desktop.restored_from = restore.volume_name, restore.backup
        Snapshot.objects.filter(desktop=desktop).exclude(status=SnapshotStatus.DELETED).update(
            status=SnapshotStatus.DELETED
        )
        if target.status == D.RUNNING:
            transitions.compare_and_set(desktop_id=desktop.pk, old=D.RUNNING, new=D.STOPPED)
        restore_recorded(desktop, restore)
    return True


def _restores_reconcile() -> int:
    """Restores cut off by a killed worker (under way, the desktop's lock free): their
    copy is removed and they fail; a new desktop that was only the restore fails with them
    (its half-made parts removed)."""
    failed = 0
    for restore in Restore.objects.filter(status__in=(R.RUNNING, R.CANCELLING)).select_related(
        "desktop__host"
    ):
        desktop = restore.desktop
        try:
            with desktop_lock(desktop.pk, wait_s=0.5):
                if desktop.host is not None:
                    disk_copy_discard(
                        host=desktop.host, volume=restore.volume_name, job=restore.job_name
                    )
                message = "interrupted (its worker stopped)"
                restore_ended(restore, HypervisorError(message, permanent=True))
                if restore.target == RestoreTarget.NEW:
                    desktop_fail(desktop_id=desktop.pk, message=f"Restore {message}", cleanup=True)
                else:
                    desktop_progress_clear(desktop, step=ActionName.RESTORE)
                failed += 1
        except DesktopBusy:
            continue  # a worker is on it
    return failed


def _restores_copying() -> set[str]:
    return set(Restore.objects.filter(status__in=RESTORING).values_list("volume_name", flat=True))


def _restore_jobs() -> set[str]:
    return set(Restore.objects.filter(status__in=RESTORING).values_list("job_name", flat=True))


# A backup's file is in BACKUP_DIR (its job runs on the desktop's own domain); a restore
# copies into a volume of the pool with a helper domain (`vms.services.disks.copies`).
long_job_register(LongJobKind(name="backup", model=Backup, cleanup=_backups_cleanup))
long_job_register(
    LongJobKind(
        name="restore",
        model=Restore,
        cleanup=_restores_reconcile,
        volumes=_restores_copying,
        domains=_restore_jobs,
    )
)
