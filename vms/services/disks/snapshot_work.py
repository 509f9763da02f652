"""Worker-side snapshot and reset work (the action table's "snapshot", "snapshot-revert",
"snapshot-delete" and "reset"), run by Celery tasks on the desktop's host.

Each worker function (`desktop_worker`) takes the desktop's lock, works through the
desktop's snapshot rows in the pending state it handles (so a task delivered twice does
nothing the second time), and clears the desktop's busy note when done. A permanent
hypervisor error marks the snapshot `error` with the message; a transient one propagates
and the task retries.

What the snapshots hold is measured from the desktop's qcow2 (`snapshots_measure`) after
each take, revert and delete, and again by the beat's backups round on each host
(`snapshots_measure_host`): writes after a snapshot copy clusters away from it, and the
quota counts them (docs/backups.md "Snapshots").
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.db import transaction

from vms.hypervisor import HypervisorError, PowerState, qemuimg
from vms.models import Desktop, DesktopStatus, Host, Snapshot, SnapshotStatus
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.locks import DesktopBusy, desktop_lock
from vms.services.desktops import transitions
from vms.services.desktops.actions import ActionName
from vms.services.desktops.events import push_desktop_changed
from vms.services.desktops.lifecycle import desktop_domain_prepare
from vms.services.desktops.quotas import effective_quota, usage
from vms.services.desktops.worker import desktop_hypervisor, desktop_load, desktop_worker
from vms.services.disks.snapshots import LIVE, SNAPSHOT_DESKTOP_STATES, snapshot_move
from vms.services.disks.volumes import desktop_volume_path
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)
S = SnapshotStatus
D = DesktopStatus
# The beat's re-measure waits this long for a desktop's lock, then skips it: the work
# holding it measures when it ends, and the next round comes in 5 minutes.
MEASURE_LOCK_WAIT_S = 0.5


def _allocation(desktop: Desktop) -> int:
    assert desktop.host is not None
    info = hypervisor_for(desktop.host).volume_info(
        pool=desktop.host.storage_pool, name=desktop.volume_name
    )
    return info.allocation_bytes if info is not None else 0


def _pending(desktop: Desktop, status: str) -> list[Snapshot]:
    return list(desktop.snapshots.filter(status=status).order_by("created_at"))


def _failed(snapshot: Snapshot, *, old: str, exc: HypervisorError) -> None:
    log.warning("snapshot %s failed: %s", snapshot.pk, exc.message)
    with transaction.atomic():
        snapshot_move(snapshot_id=snapshot.pk, old=old, new=S.ERROR, last_error=exc.message)
        audit_record(
            action=AuditVerb.SNAPSHOT_ERROR,
            desktop=snapshot.desktop,
            snapshot=str(snapshot.pk),
            message=exc.message,
        )


@desktop_worker(busy=ActionName.SNAPSHOT)
def desktop_snapshot_take(desktop: Desktop) -> None:
    """Take the desktop's pending snapshots; each one's size is measured from the
    volume's allocation before and after."""
    for snapshot in _pending(desktop, S.CREATING):
        _take(desktop, snapshot)


def _take(desktop: Desktop, snapshot: Snapshot) -> None:
    try:
        _room_check(desktop)
        before = _allocation(desktop)
        info = desktop_hypervisor(desktop).snapshot_create(
            name=desktop.domain_name, snapshot=snapshot.libvirt_name
        )
        grown = max(_allocation(desktop) - before, 0)
    except HypervisorError as exc:
        if not exc.permanent:
            raise
        _failed(snapshot, old=S.CREATING, exc=exc)
        return
    # The image's measure; the volume's growth while it was taken when that fails.
    measured = snapshots_measure(desktop=desktop)
    size = measured.get(snapshot.pk, grown) if measured is not None else grown
    with transaction.atomic():
        snapshot_move(
            snapshot_id=snapshot.pk,
            old=S.CREATING,
            new=S.READY,
            with_memory=info.with_memory,
            size_bytes=size,
        )
        audit_record(
            action=AuditVerb.SNAPSHOT_READY,
            desktop=desktop,
            snapshot=str(snapshot.pk),
            with_memory=info.with_memory,
            size_bytes=size,
        )


def _room_check(desktop: Desktop) -> None:
    """The request was checked against the figures of the last measure; measure this
    desktop's snapshots now (the guest may have written since) and refuse the snapshot
    (permanent: it ends in `error`, saying why) if the owner is then over the disk quota,
    the new one counted as it was at the request."""
    snapshots_measure(desktop=desktop)
    limits, used = effective_quota(user=desktop.owner), usage(user=desktop.owner)
    if used.max_disk_gib > limits.max_disk_gib:
        raise HypervisorError(
            f"not taken: measured now, the disk quota would be {used.max_disk_gib} GiB "
            f"(snapshots and backups included), the limit is {limits.max_disk_gib}",
            permanent=True,
        )


@desktop_worker(busy=ActionName.SNAPSHOT_REVERT)
def desktop_snapshot_revert(desktop: Desktop) -> None:
    """Take the desktop back to its snapshot being reverted to; the desktop ends running
    (a snapshot with memory) or stopped (one of a stopped desktop)."""
    for snapshot in _pending(desktop, S.REVERTING):
        _revert(desktop, snapshot)
    snapshots_measure(desktop=desktop)  # the writes since the snapshot are gone


def _revert(desktop: Desktop, snapshot: Snapshot) -> None:
    try:
        state = desktop_hypervisor(desktop).snapshot_revert(
            name=desktop.domain_name, snapshot=snapshot.libvirt_name
        )
    except HypervisorError as exc:
        if not exc.permanent:
            raise
        _failed(snapshot, old=S.REVERTING, exc=exc)
        return
    new = D.RUNNING if state is PowerState.running else D.STOPPED
    with transaction.atomic():
        snapshot_move(snapshot_id=snapshot.pk, old=S.REVERTING, new=S.READY)
        if desktop.status != new:
            transitions.compare_and_set(desktop_id=desktop.pk, old=desktop.status, new=new)
        audit_record(
            action=AuditVerb.SNAPSHOT_REVERTED,
            desktop=desktop,
            snapshot=str(snapshot.pk),
            old=desktop.status,
            new=new,
        )
        push_desktop_changed(desktop_id=desktop.pk)


@desktop_worker(busy=ActionName.SNAPSHOT_DELETE)
def desktop_snapshot_remove(desktop: Desktop) -> None:
    """Delete the desktop's snapshots marked for deletion (their space is given back)."""
    for snapshot in _pending(desktop, S.DELETING):
        try:
            desktop_hypervisor(desktop).snapshot_delete(
                name=desktop.domain_name, snapshot=snapshot.libvirt_name
            )
        except HypervisorError as exc:
            if not exc.permanent:
                raise
            _failed(snapshot, old=S.DELETING, exc=exc)
            continue
        _gone(desktop, snapshot)
    snapshots_measure(desktop=desktop)  # what the others hold now


def _gone(desktop: Desktop, snapshot: Snapshot) -> None:
    with transaction.atomic():
        snapshot_move(snapshot_id=snapshot.pk, old=snapshot.status, new=S.DELETED)
        audit_record(action=AuditVerb.SNAPSHOT_DELETED, desktop=desktop, snapshot=str(snapshot.pk))


def snapshots_measure(*, desktop: Desktop) -> dict[UUID, int] | None:
    """Measure from the desktop's qcow2 what its snapshots hold and write each live row's
    share (`snapshot_shares`) to `size_bytes`, which the disk quota counts. The caller
    holds the desktop's lock. Returns the rows' figures by id; None when the image could
    not be measured (no disk, a qemu-img error): logged, and the old figures are kept."""
    rows = list(desktop.snapshots.filter(status__in=LIVE).order_by("created_at"))
    if not rows:
        return {}
    try:
        space = qemuimg.image_snapshot_space(desktop_volume_path(desktop))
    except HypervisorError as exc:
        log.warning("snapshot space of desktop %s not measured, figures kept: %s",
                    desktop.pk, exc.message)  # fmt: skip
        return None
    sizes = snapshot_shares(space=space, names={row.pk: row.libvirt_name for row in rows})
    for row in rows:
        # One still being taken keeps the figure it was counted as until `_take` has it.
        if row.status != S.CREATING and row.size_bytes != sizes[row.pk]:
            Snapshot.objects.filter(pk=row.pk).update(size_bytes=sizes[row.pk])
    log.info("snapshot space of desktop %s: %d bytes (%s)", desktop.pk, space.total_bytes, space)
    return sizes


def snapshot_shares(*, space: qemuimg.SnapshotSpace, names: dict[UUID, str]) -> dict[UUID, int]:
    """Share the measured total out over a desktop's live rows (`names`: id to libvirt
    name, oldest first), so that they add up to it. A row whose snapshot is in the image
    gets its saved memory first; what is left (clusters later writes copied away, which
    several snapshots may share and qemu-img does not attribute) is split equally over
    those rows, the odd bytes to the newest. A row whose snapshot is not in the image
    (one that failed) holds nothing."""
    sizes = dict.fromkeys(names, 0)
    found = [pk for pk, name in names.items() if name in space.vm_state_bytes]
    left = space.total_bytes
    for pk in found:
        sizes[pk] = min(space.vm_state_bytes[names[pk]], left)
        left -= sizes[pk]
    if not found:
        if left:
            log.warning("%d bytes of snapshots the portal does not know", left)
        return sizes
    share, odd = divmod(left, len(found))
    for pk in found:
        sizes[pk] += share
    sizes[found[-1]] += odd
    return sizes


def snapshots_measure_host(*, host: Host) -> int:
    """The beat's re-measure on one host (run by its own worker, which reads the files):
    each running or stopped desktop there with live snapshots, under its lock taken with a
    short wait (a busy desktop is skipped). How many were measured; never raises for a
    desktop that cannot be measured."""
    ids = (
        Desktop.objects.filter(
            host=host, status__in=SNAPSHOT_DESKTOP_STATES, snapshots__status__in=LIVE
        )
        .values_list("pk", flat=True)
        .distinct()
    )
    measured = 0
    for desktop_id in list(ids):
        try:
            with desktop_lock(desktop_id, wait_s=MEASURE_LOCK_WAIT_S):
                desktop = desktop_load(desktop_id)  # as it is now that it is ours
                if desktop is None or desktop.host_id != host.pk:
                    continue
                if desktop.status in SNAPSHOT_DESKTOP_STATES:
                    measured += snapshots_measure(desktop=desktop) is not None
        except DesktopBusy:
            continue
    return measured


@desktop_worker(when={D.RUNNING, D.STOPPED}, busy=ActionName.RESET)
def desktop_reset(desktop: Desktop) -> None:
    """A fresh overlay over the template's newest base: the disk, its snapshots and its
    checkpoints are thrown away. The desktop ends stopped (a running one is powered off
    first, as the confirmation says); the owner starts it on its fresh disk."""
    hypervisor = desktop_hypervisor(desktop)
    assert desktop.host is not None
    was_running = desktop.status == D.RUNNING
    old_base = desktop.base_image_path
    hypervisor.undefine(name=desktop.domain_name)  # with its snapshots' metadata
    hypervisor.delete_volume(pool=desktop.host.storage_pool, name=desktop.volume_name)
    desktop.base_image_path = desktop.template.base_image_path
    desktop.restored_from = None
    Desktop.objects.filter(pk=desktop.pk).update(
        base_image_path=desktop.base_image_path, restored_from=None
    )
    hypervisor.define_domain(desktop_domain_prepare(desktop))
    if was_running:
        transitions.compare_and_set(desktop_id=desktop.pk, old=D.RUNNING, new=D.STOPPED)
    _reset_done(desktop, old_base=old_base)


def _reset_done(desktop: Desktop, *, old_base: str) -> None:
    with transaction.atomic():
        for snapshot in desktop.snapshots.exclude(status=S.DELETED):
            Snapshot.objects.filter(pk=snapshot.pk).update(status=S.DELETED)
        audit_record(
            action=AuditVerb.DESKTOP_RESET_DONE,
            desktop=desktop,
            old_base=old_base,
            new_base=desktop.base_image_path,
        )
        push_desktop_changed(desktop_id=desktop.pk)


PENDING_ACTION: dict[str, ActionName] = {
    S.CREATING: ActionName.SNAPSHOT,
    S.REVERTING: ActionName.SNAPSHOT_REVERT,
    S.DELETING: ActionName.SNAPSHOT_DELETE,
}


def snapshots_resume() -> int:
    """Queue again the snapshot work of killed workers: a pending snapshot whose desktop
    lock is free has nobody working on it (the beat's backups round calls this)."""
    from vms.services.core.queue import enqueue_desktop_task
    from vms.services.desktops.actions import ACTIONS

    resumed = 0
    pending = Snapshot.objects.filter(status__in=PENDING_ACTION).select_related("desktop__host")
    for snapshot in pending:
        try:
            with desktop_lock(snapshot.desktop_id, wait_s=0.5):
                pass
        except DesktopBusy:
            continue
        enqueue_desktop_task(ACTIONS[PENDING_ACTION[snapshot.status]], desktop=snapshot.desktop)
        resumed += 1
    return resumed
