"""Recovering a lost host's desktops on the other hosts.

A host marked down (vms.services.heartbeat) may be dead, or only cut off while its QEMUs
still write to their disks on the shared storage. A desktop is therefore restarted
elsewhere only where the lock manager lets it: every networked host runs libvirt's
`lockd` with its lockspace on the shared storage (scripts/lab-host, docs/fleet.md), so a
second QEMU cannot open a disk while the first one's lease is held; the lease goes only
with the old host's lock daemon, i.e. when nothing there can write any more.

- Running (or starting, stopping) desktops go to `recovering`, aimed at the least loaded
  host that can take them (`migrate_to`); that host's worker restarts them from their disk
  (persistent) or from a fresh overlay (non-persistent). While the lease is still held
  they wait, saying so, and each heartbeat round tries again.
- Stopped desktops (and those in error) are re-homed: their next start is elsewhere.
- When the old host comes back first, desktops still running there stay there.
"""

from __future__ import annotations

import logging

from django.db import transaction

from vms.hypervisor import Hypervisor, HypervisorError, PowerState
from vms.models import Desktop, DesktopStatus, Host, HostStatus
from vms.services import transitions
from vms.services.actions import ACTIONS
from vms.services.audit import audit_record
from vms.services.events import push_desktop_changed
from vms.services.hosts import hypervisor_for
from vms.services.migration import networked
from vms.services.placement import (
    allocation_add,
    host_allocations,
    host_least_loaded,
    hosts_taking_desktops,
)
from vms.services.queue import enqueue_desktop_task

log = logging.getLogger(__name__)
S = DesktopStatus
RECOVER_FROM = (S.RUNNING, S.STARTING, S.STOPPING)
REHOME_FROM = (S.STOPPED, S.ERROR)
Used = dict[int, dict[str, int]]
WAITING_NOTE = (
    "Host {old} stopped answering. This desktop restarts on host {new} as soon as it is "
    "certain that nothing on {old} still writes to its disk."
)


def host_recovery_start(*, host: Host) -> dict[str, int]:
    """One recovery pass over a down host: aim its live desktops at other hosts and
    re-home its stopped ones (each heartbeat round calls this while the host stays down).
    The targets are locked, and their allocations read, once for the pass. Counts what
    it did."""
    done = {"recovering": 0, "rehomed": 0}
    with transaction.atomic():
        targets = _targets(host)
        used = host_allocations()
        for desktop in _desktops(host, RECOVER_FROM):
            done["recovering"] += _recover(desktop, source=host, targets=targets, used=used)
        for desktop in _desktops(host, REHOME_FROM):
            done["rehomed"] += _rehome(desktop, source=host, targets=targets, used=used)
    return done


def hosts_down() -> list[Host]:
    """Enabled hosts marked down (their desktops are being recovered)."""
    return list(Host.objects.filter(enabled=True, status=HostStatus.DOWN))


def _desktops(host: Host, states: tuple[str, ...]) -> list[Desktop]:
    rows = Desktop.objects.filter(host=host, status__in=states)
    return list(rows.select_related("host", "migrate_to", "template"))


def _targets(source: Host) -> list[Host]:
    candidates = hosts_taking_desktops(proven=True).select_for_update().exclude(pk=source.pk)
    return [host for host in candidates.order_by("pk") if networked(host)]


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
    audit_record(action="desktop.recovering", desktop=desktop, source=source.name,
                 target=target.name, old=old)  # fmt: skip
    push_desktop_changed(desktop_id=desktop.pk)
    enqueue_desktop_task(ACTIONS["recover"], desktop=desktop)
    return 1


def _rehome(desktop: Desktop, *, source: Host, targets: list[Host], used: Used) -> int:
    target = host_least_loaded(targets, desktop, used=used)
    if target is None:
        return 0
    moved = Desktop.objects.filter(pk=desktop.pk, host=source, status=desktop.status)
    if not moved.update(host=target):
        return 0
    allocation_add(used, target, desktop)
    audit_record(action="desktop.rehomed", desktop=desktop, source=source.name,
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
                audit_record(action="desktop.recovery_cancelled", desktop=desktop,
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
        enqueue_desktop_task(ACTIONS["recover"], desktop=desktop)
    return len(desktops)
