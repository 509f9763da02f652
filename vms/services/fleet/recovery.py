"""Recovering a lost host's desktops on the other hosts.

A host marked down (vms.services.fleet.heartbeat) may be dead, or only silent (its worker
restarting, a broker blip, a cut link) while its QEMUs still write to their disks on the
shared storage. A desktop is therefore restarted elsewhere only when its old QEMU provably
cannot write: every host runs libvirt's `lockd` with its lockspace on the shared storage
(docs/fleet.md), the lease of a running guest's disk goes only with that QEMU or with the
old host's lock daemon, and the recover worker reads the lease (vms.services.disks.leases)
before it deletes, defines or starts anything.

- Only hosts whose heartbeat proved a working disk lock manager (`Host.disk_lock_ok`) take
  part: a down host without that proof keeps its live desktops (their owners are told
  why; an admin decides), and only hosts with it receive desktops.
- Running (or starting, stopping) desktops go to `recovering`, aimed at the least loaded
  host that can take them (`migrate_to`); that host's worker restarts them from their disk
  (persistent) or from a fresh overlay (non-persistent) once the lease is gone. While it
  is held they wait, saying so, and each heartbeat round tries again.
- Stopped desktops (and those in error) are re-homed: their next start is elsewhere.
- When the old host comes back first, desktops still running there stay there.
"""

from __future__ import annotations

import logging

from django.db import transaction

from vms.hypervisor import Hypervisor, HypervisorError, PowerState
from vms.models import Desktop, DesktopStatus, Host, HostStatus
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.queue import enqueue_desktop_task
from vms.services.desktops import transitions
from vms.services.desktops.actions import ACTIONS, ActionName
from vms.services.desktops.events import push_desktop_changed
from vms.services.desktops.lifecycle import desktop_domain_prepare
from vms.services.desktops.progress import LaunchStep
from vms.services.desktops.worker import desktop_fail, desktop_worker
from vms.services.disks.leases import LeaseState, desktop_disk_path, disk_lease_state
from vms.services.fleet.hosts import hypervisor_for
from vms.services.fleet.migration import networked
from vms.services.fleet.placement import (
    allocation_add,
    host_allocations,
    host_least_loaded,
    hosts_taking_desktops,
)

log = logging.getLogger(__name__)
S = DesktopStatus
RECOVER_FROM = (S.RUNNING, S.STARTING, S.STOPPING)
REHOME_FROM = (S.STOPPED, S.ERROR)
Used = dict[int, dict[str, int]]
WAITING_NOTE = (
    "Host {old} stopped answering. This desktop restarts on host {new} as soon as it is "
    "certain that nothing on {old} still writes to its disk."
)
UNPROVEN_NOTE = (
    "Host {old} stopped answering. It never proved a working disk lock manager, so this "
    "desktop is not restarted elsewhere: its disk may still be in use there. It goes on when "
    "{old} answers again."
)


def host_recovery_start(*, host: Host) -> dict[str, int]:
    """One recovery pass over a down host: aim its live desktops at other hosts and
    re-home its stopped ones (each heartbeat round calls this while the host stays down).
    The targets are locked, and their allocations read, once for the pass. Counts what
    it did.

    Only while the host is still down, read under its row lock: its heartbeat's move to
    up waits for the pass (the rejoin after it then keeps what still runs there), or the
    pass finds it up and leaves its desktops be. A pass that trusted the round's list of
    down hosts sent a desktop the rejoin had just kept away again, and it waited for ever
    for the lease its running QEMU holds (seen in a full run)."""
    done = {"recovering": 0, "rehomed": 0, "held": 0}
    with transaction.atomic():
        source = Host.objects.select_for_update().filter(pk=host.pk, status=HostStatus.DOWN).first()
        if source is None:
            return done
        targets = _targets(source)
        used = host_allocations()
        for desktop in _desktops(source, RECOVER_FROM):
            if not source.disk_lock_ok:
                done["held"] += _hold(desktop, source=source)
                continue
            done["recovering"] += _recover(desktop, source=source, targets=targets, used=used)
        for desktop in _desktops(source, REHOME_FROM):
            done["rehomed"] += _rehome(desktop, source=source, targets=targets, used=used)
    return done


def hosts_down() -> list[Host]:
    """Enabled hosts marked down (their desktops are being recovered)."""
    return list(Host.objects.filter(enabled=True, status=HostStatus.DOWN))


def _desktops(host: Host, states: tuple[str, ...]) -> list[Desktop]:
    rows = Desktop.objects.filter(host=host, status__in=states)
    return list(rows.select_related("host", "migrate_to", "template"))


def _targets(source: Host) -> list[Host]:
    """Hosts that may take a lost host's desktops: their disk locks proven (a desktop
    restarted there holds its lease, so its old QEMU can never resume on its disk)."""
    candidates = hosts_taking_desktops(proven=True).select_for_update().exclude(pk=source.pk)
    candidates = candidates.filter(disk_lock_ok=True)
    return [host for host in candidates.order_by("pk") if networked(host)]


def _hold(desktop: Desktop, *, source: Host) -> int:
    """Leave a live desktop of a host without proven disk locks where it is, saying why
    (once: the note is written only when it changes)."""
    why = (source.disk_lock_note or "not checked yet").rstrip(".")
    # The owner's note: the reason (a lockspace path, other desktops' names) is the admins'.
    note = UNPROVEN_NOTE.format(old=source.name)
    if (
        not Desktop.objects.filter(pk=desktop.pk, status=desktop.status)
        .exclude(last_error=note)
        .update(last_error=note)
    ):
        return 0
    audit_record(action=AuditVerb.DESKTOP_RECOVERY_REFUSED, desktop=desktop, source=source.name,
                 reason=why)  # fmt: skip
    push_desktop_changed(desktop_id=desktop.pk)
    log.warning("recovery: desktop %s stays on %s: %s", desktop.pk, source.name, why)
    return 1


def _recover(desktop: Desktop, *, source: Host, targets: list[Host], used: Used) -> int:
    target = host_least_loaded(targets, desktop, used=used)
    if target is None:
        log.warning("recovery: no host has room for desktop %s yet", desktop.pk)
        return 0
    note = WAITING_NOTE.format(old=source.name, new=target.name)
    old = desktop.status
    if not transitions.compare_and_set(
        desktop_id=desktop.pk, old=old, new=S.RECOVERING, migrate_to=target, last_error=note
    ):
        return 0
    allocation_add(used, target, desktop)
    desktop.migrate_to = target
    audit_record(action=AuditVerb.DESKTOP_RECOVERING, desktop=desktop, source=source.name,
                 target=target.name, old=old)  # fmt: skip
    push_desktop_changed(desktop_id=desktop.pk)
    enqueue_desktop_task(ACTIONS[ActionName.RECOVER], desktop=desktop)
    return 1


def _rehome(desktop: Desktop, *, source: Host, targets: list[Host], used: Used) -> int:
    target = host_least_loaded(targets, desktop, used=used)
    if target is None:
        return 0
    moved = Desktop.objects.filter(pk=desktop.pk, host=source, status=desktop.status)
    if not moved.update(host=target):
        return 0
    allocation_add(used, target, desktop)
    audit_record(action=AuditVerb.DESKTOP_REHOMED, desktop=desktop, source=source.name,
                 target=target.name, reason="host down")  # fmt: skip
    push_desktop_changed(desktop_id=desktop.pk)
    return 1


def host_rejoin(*, host: Host) -> int:
    """A down host answers again: its desktops still recovering whose guest runs there
    after all (it was cut off, not dead) stay where they are. Returns how many stayed."""
    hypervisor = hypervisor_for(host)
    stayed = 0
    for desktop in _desktops(host, (S.RECOVERING,)):
        if not _runs(hypervisor, desktop):
            log.info("desktop %s did not survive on %s; its recovery goes on", desktop.pk, host)
            continue  # gone with the host: the heartbeat round keeps sending its recovery
        with transaction.atomic():
            back = {"migrate_to": None, "last_error": ""}
            if transitions.compare_and_set(
                desktop_id=desktop.pk, old=S.RECOVERING, new=S.RUNNING, **back
            ):
                audit_record(action=AuditVerb.DESKTOP_RECOVERY_CANCELLED, desktop=desktop,
                             host=host.name, reason="still running on its host")  # fmt: skip
                push_desktop_changed(desktop_id=desktop.pk)
                stayed += 1
    return stayed


def _runs(hypervisor: Hypervisor, desktop: Desktop) -> bool:
    try:
        state = hypervisor.state(name=desktop.domain_name)
    except HypervisorError as exc:
        log.warning("could not ask for desktop %s after its host came back: %s", desktop.pk, exc)
        return False
    if state is PowerState.paused:
        # Found paused after a partition (QEMU stopped it while cut off; no other host ever
        # ran it, the leases saw to that): it goes on where it was.
        try:
            hypervisor.start(name=desktop.domain_name)
        except HypervisorError as exc:
            log.warning("could not resume desktop %s on its host: %s", desktop.pk, exc)
            return False
        return True
    return state is PowerState.running


def recovering_resend() -> int:
    """Send again the recovery work of every desktop still recovering (each heartbeat
    round: its target retries once the old host's leases are gone)."""
    rows = Desktop.objects.filter(status=S.RECOVERING, migrate_to__isnull=False)
    desktops = list(rows.select_related("migrate_to"))
    for desktop in desktops:
        enqueue_desktop_task(ACTIONS[ActionName.RECOVER], desktop=desktop)
    return len(desktops)


# What libvirt says when a disk another QEMU holds is refused (lockd, then QEMU's own lock).
LEASE_HELD_HINTS = ("is locked", "resource busy", "lockspace", 'failed to get "write" lock')


@desktop_worker(when={S.RECOVERING})
def desktop_recover(desktop: Desktop) -> None:
    """Restart a lost host's desktop here, on `migrate_to`: recovering -> running.

    Persistent desktops start from their own disk, non-persistent ones from a fresh
    overlay. Nothing is deleted, defined or started before the disk's lease is provably
    lost (vms.services.disks.leases): while the old host's QEMU, or its lock daemon, may
    still hold it, the desktop keeps waiting (the recovery pass sends this each round).
    The lock manager and QEMU's image lock refuse a second writer at the start as well.
    """
    if desktop.migrate_to is None:
        return
    target, source = desktop.migrate_to, desktop.host
    lease = disk_lease_state(disk_path=desktop_disk_path(desktop.volume_name))
    if lease.state is not LeaseState.LOST:
        log.info("desktop %s waits to be recovered on %s: its disk lease is %s (%s)",
                 desktop.pk, target, lease.state.value, lease.reason)  # fmt: skip
        return
    hypervisor = hypervisor_for(target)
    try:
        if not desktop.template.persistent:
            hypervisor.delete_volume(pool=target.storage_pool, name=desktop.volume_name)
        hypervisor.define_domain(desktop_domain_prepare(desktop, on=target))
        hypervisor.start(name=desktop.domain_name)
    except HypervisorError as exc:
        if exc.permanent and not _lease_held(exc):
            desktop_fail(desktop_id=desktop.pk, message=exc.message, cleanup=False)
        else:
            log.info("desktop %s waits to be recovered on %s: %s", desktop.pk, target, exc)
        return
    _recovered(desktop, source=source, target=target)


def _lease_held(exc: HypervisorError) -> bool:
    """Whether the disk is still held elsewhere: refused by the lock manager's lease, or by
    QEMU's own image lock (which comes first when both QEMUs share one kernel, or NFSv4)."""
    text = exc.message.lower()
    return any(hint in text for hint in LEASE_HELD_HINTS)


def _recovered(desktop: Desktop, *, source: Host | None, target: Host) -> None:
    note = f"Restarted on host {target.name} after host {source} stopped answering."
    with transaction.atomic():
        if transitions.compare_and_set(
            desktop_id=desktop.pk, old=S.RECOVERING, new=S.RUNNING,
            host=target, migrate_to=None, last_error=note, progress=LaunchStep.READY,
        ):  # fmt: skip
            audit_record(action=AuditVerb.DESKTOP_RECOVERED, desktop=desktop, source=str(source),
                         target=target.name, persistent=desktop.template.persistent)  # fmt: skip
            push_desktop_changed(desktop_id=desktop.pk)
