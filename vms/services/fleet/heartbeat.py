"""The host heartbeat: each host's own worker checks its libvirt and storage pool and samples
its load; the portal marks a host down when its heartbeat stops, and up when it returns.

A heartbeat runs on the host's queue (`host.<name>`), so it stops when the host, its
libvirtd or its worker is gone: silence is what "down" means, not one failed call.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from vms.hypervisor import HostLoad, Hypervisor, HypervisorError, PowerState
from vms.models import Desktop, Host, HostStatus
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.state_machine import StateMachine
from vms.services.disks.leases import desktop_disk_path, host_disk_lock_verdict
from vms.services.fleet.hosts import hypervisor_for
from vms.services.fleet.recovery import host_rejoin
from vms.services.networks.desktop_networks import interfaces_refresh
from vms.settings_access import name_prefix

log = logging.getLogger(__name__)
# The moves a host's status may make; `host_status_move` refuses any other.
HOST_TRANSITIONS: dict[str, frozenset[str]] = {
    HostStatus.UP: frozenset({HostStatus.DOWN}),
    HostStatus.DOWN: frozenset({HostStatus.UP}),
}
HOST_STATES = StateMachine(
    model=Host,
    states=HostStatus,
    table=HOST_TRANSITIONS,
    what="A host",
    changed_at_field="status_changed_at",
)


def host_heartbeat(*, host: Host) -> bool:
    """Check the host's libvirt and storage pool and sample its load; record it for pages,
    placement and /healthz. A host that was down and answers again rejoins."""
    try:
        hypervisor = hypervisor_for(host)
        hypervisor.ensure_pool(name=host.storage_pool, path=str(settings.STORAGE_POOL_PATH))
        virt_type = "kvm" if hypervisor.kvm_available() else "qemu"
        load = _sample(hypervisor)
        locks = _disk_locks(host, hypervisor)
    except HypervisorError as exc:
        log.warning("host %s is unhealthy: %s", host.name, exc.message)
        _record(host, ok=False, error=exc.message)
        return False
    _record(host, ok=True, error="", **locks, **_load_fields(host, load))
    _refresh_addresses(host)
    # Detected once; a type chosen at registration (or by the admin) is kept.
    Host.objects.filter(pk=host.pk, virt_type="").update(virt_type=virt_type)
    if host_status_move(host=host, old=HostStatus.DOWN, new=HostStatus.UP):
        stayed = host_rejoin(host=host)
        audit_record(action=AuditVerb.HOST_UP, name=host.name, desktops_kept=stayed)
        log.warning("host %s is up again; %d of its desktops were still running", host.name, stayed)
    return True


def _disk_locks(host: Host, hypervisor: Hypervisor) -> dict[str, Any]:
    """The proof that the host's disk lock manager works: each of its running desktops
    holds its lease in the shared lockspace (vms.services.disks.leases). A guest that
    stopped between the listing and the check is asked again, not counted against it."""
    running = _running_disks(host, hypervisor)
    ok, note = host_disk_lock_verdict(running_disks=running)
    if not ok and running:
        ok, note = host_disk_lock_verdict(running_disks=_running_disks(host, hypervisor))
    if not ok and (host.disk_lock_ok or host.disk_lock_note != note):  # once, not each beat
        log.warning("host %s takes no part in recovery: %s", host.name, note)
    return {"disk_lock_ok": ok, "disk_lock_note": note}


def _running_disks(host: Host, hypervisor: Hypervisor) -> dict[str, str]:
    """Domain name -> disk path of the portal's guests running on the host."""
    running = {
        domain.name
        for domain in hypervisor.list_domains(prefix=name_prefix())
        if domain.state is PowerState.running
    }
    rows = Desktop.objects.filter(domain_name__in=running).values_list("domain_name", "volume_name")
    return {name: desktop_disk_path(volume) for name, volume in rows if volume}


def _refresh_addresses(host: Host) -> None:
    """The desktops' addresses from the DHCP leases (a failure costs only this round's)."""
    try:
        interfaces_refresh(host=host)
    except HypervisorError as exc:
        log.info("addresses of host %s not refreshed: %s", host.name, exc.message)


def _sample(hypervisor: Hypervisor) -> HostLoad | None:
    try:
        return hypervisor.host_load()
    except HypervisorError as exc:
        if not exc.permanent:
            raise
        return None  # a backend that cannot tell: placement uses the caps alone


def _load_fields(host: Host, load: HostLoad | None) -> dict[str, Any]:
    if load is None:
        return {"last_heartbeat_at": timezone.now()}
    counters = {"busy_ns": load.cpu_busy_ns, "total_ns": load.cpu_total_ns}
    return {
        "last_heartbeat_at": timezone.now(),
        "load_cpus": load.cpus,
        # The total by the same statistics as the available figure, where the host has
        # them: libvirt's node info can count another total (7 GiB beside 23 GiB seen
        # here), and "22000 of 7385 MiB free" helps nobody.
        "load_memory_mib": load.memory_stats_total_mib or load.memory_mib,
        "load_available_memory_mib": load.available_memory_mib,
        "load_running_guests": load.running_guests,
        "load_cpu_percent": cpu_percent(before=host.load_cpu_counters, after=counters),
        "load_cpu_counters": counters,
    }


def cpu_percent(*, before: dict[str, int | None], after: dict[str, int | None]) -> float | None:
    """The host's CPU use between two samples of its counters, in percent of all its CPUs;
    None without two comparable samples (the first one, a reboot, a backend without them)."""
    busy = _delta(before.get("busy_ns"), after.get("busy_ns"))
    total = _delta(before.get("total_ns"), after.get("total_ns"))
    if busy is None or not total:
        return None
    return round(min(max(100 * busy / total, 0.0), 100.0), 1)


def _delta(before: int | None, after: int | None) -> int | None:
    if before is None or after is None or after < before:
        return None
    return after - before


def _record(host: Host, *, ok: bool, error: str, **extra: Any) -> None:
    Host.objects.filter(pk=host.pk).update(
        last_checked_at=timezone.now(), last_check_ok=ok, last_check_error=error, **extra
    )


def host_status_move(*, host: Host, old: str, new: str) -> bool:
    """Compare-and-set the host's status from `old` to `new` (a move of HOST_TRANSITIONS);
    False when another process moved it first."""
    moved = HOST_STATES.compare_and_set(pk=host.pk, old=old, new=new)
    if moved:
        host.status = new
    return moved


def hosts_silent() -> list[Host]:
    """Enabled hosts marked up whose last heartbeat is older than HOST_DOWN_AFTER_S."""
    cutoff = timezone.now() - timedelta(seconds=settings.HOST_DOWN_AFTER_S)
    return list(
        Host.objects.filter(enabled=True, status=HostStatus.UP, last_heartbeat_at__lt=cutoff)
    )


def host_mark_down(*, host: Host) -> bool:
    """Mark a silent host down (once) and record it; the caller starts the recovery."""
    with transaction.atomic():
        if not host_status_move(host=host, old=HostStatus.UP, new=HostStatus.DOWN):
            return False
        host.refresh_from_db(fields=["last_heartbeat_at"])
        last = host.last_heartbeat_at or timezone.now()
        silent_s = (timezone.now() - last).total_seconds()
        audit_record(action=AuditVerb.HOST_DOWN, name=host.name, silent_s=round(silent_s, 1))
    log.warning("host %s is down: no heartbeat for %.0f s", host.name, silent_s)
    return True
