"""The fleet's hosts as an admin manages them: registering, disabling, maintenance and
draining (running desktops move live to other hosts; stopped ones are re-homed)."""

from __future__ import annotations

import ipaddress
import logging
from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from vms.hypervisor import HypervisorError
from vms.models import Desktop, DesktopStatus, Host, HostStatus
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import HostCannotTake, ServiceError
from vms.services.core.queue import enqueue_task
from vms.services.desktops.actions import ActionName
from vms.services.desktops.requests import desktop_act
from vms.services.fleet.heartbeat import host_heartbeat
from vms.services.fleet.hosts import host_capacity_read, host_check_uri, hypervisor_for
from vms.services.fleet.migration import networked
from vms.services.fleet.placement import host_least_loaded, hosts_taking_desktops
from vms.services.networks.desktop_networks import guards_refresh

log = logging.getLogger(__name__)
S = DesktopStatus
# Desktops a drain moves now; the others (starting, stopping, migrating...) settle first.
DRAIN_LIVE = (S.RUNNING,)
DRAIN_REHOME = (S.STOPPED, S.ERROR)
DRAIN_PASS_DELAY_S = 3
DRAIN_MAX_PASSES = 200


def host_register(*, name: str, uri: str, console_address: str, virt_type: str = "") -> Host:
    """Register (or update) host `name` at `uri`, with the capacity it really has, and
    check it once so placement may use it at once. Idempotent: a lab host that comes up
    again keeps its row, its desktops and the admin's changes to its capacity.

    `virt_type` ("kvm" or "qemu") overrides what the host's libvirt claims: a remote host
    cannot run the KVM probe (vms.hypervisor.kvmprobe), and a software KVM such as kvm-pvm
    is listed in capabilities yet crashes ordinary guests."""
    if virt_type not in ("", "kvm", "qemu"):
        raise ServiceError(f"{virt_type!r} is not a virtualization type (kvm or qemu).")
    uri = host_check_uri(uri)
    console_address = _checked_address(console_address)
    found = host_capacity_read(uri=uri, pool=settings.STORAGE_POOL_NAME)
    defaults = {
        "capacity_vcpus": found.cpus,
        "capacity_memory_mib": found.memory_mib,
        "storage_pool": settings.STORAGE_POOL_NAME,
    }
    if found.pool_gib is not None:
        defaults["capacity_disk_gib"] = found.pool_gib
    chosen = {"virt_type": virt_type} if virt_type else {}
    host, created = Host.objects.get_or_create(
        name=name, defaults={"uri": uri, "console_address": console_address, **defaults, **chosen}
    )
    moved = (host.uri, host.console_address) != (uri, console_address)
    if not created:
        Host.objects.filter(pk=host.pk).update(
            uri=uri, console_address=console_address, enabled=True, **chosen
        )
        host.refresh_from_db()
    audit_record(action=AuditVerb.HOST_REGISTER, name=name, uri=uri, created=created)
    if created or moved:
        guards_refresh()  # every desktop's guard now drops this host's addresses too
    host_heartbeat(host=host)
    host.refresh_from_db()  # the heartbeat's verdict
    return host


def _checked_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise ServiceError(f"{address!r} is not an IP address (the console address).") from None


def host_disable(*, name: str, actor: User | None = None) -> None:
    """Take host `name` out of the fleet (its row and history stay) once no desktop is left
    on it: its stopped desktops are first handed to other hosts (their disks are on the
    shared storage; each starts there next time), and anything else still there (running,
    busy, or with no other host to take it) refuses the whole change with the list, since
    a desktop on a host no worker serves could be neither started nor deleted."""
    host = Host.objects.filter(name=name).first()
    if host is None:
        raise ServiceError(f"There is no host named {name!r}.")
    for desktop in host_desktops(host=host).filter(status__in=DRAIN_REHOME):
        _drain_rehome(desktop, actor=actor, source=host)
    with transaction.atomic():
        Host.objects.select_for_update().filter(pk=host.pk).first()  # no placement meanwhile
        left = list(host_desktops(host=host).select_related("owner").order_by("name"))
        if left:
            raise HostNotEmpty(_still_there(host, left))
        Host.objects.filter(pk=host.pk).update(enabled=False)
        audit_record(action=AuditVerb.HOST_DISABLE, actor=actor, name=name)


class HostNotEmpty(ServiceError):
    """A host cannot leave the fleet while desktops are still assigned to it."""


def _still_there(host: Host, left: list[Desktop]) -> str:
    shown = ", ".join(f"{d.name} of {d.owner} ({d.status})" for d in left[:20])
    more = f" and {len(left) - 20} more" if len(left) > 20 else ""
    return (
        f"Host {host.name} still has {len(left)} desktop(s) it could not hand to another "
        f"host now: {shown}{more}. Put it in maintenance to move its running desktops live, wait "
        "for the others to settle, then disable it again."
    )


def desktop_host_for_start(*, desktop: Desktop) -> dict[str, Host]:
    """The start action's `prepare`: see `_host_serving` (the new host must have room)."""
    return _host_serving(desktop, room=True)


def desktop_host_for_delete(*, desktop: Desktop) -> dict[str, Host]:
    """The delete action's `prepare`: see `_host_serving` (any working host will do)."""
    return _host_serving(desktop, room=False)


def _host_serving(desktop: Desktop, *, room: bool) -> dict[str, Host]:
    """For the start and delete actions (vms.services.desktops.actions): a stopped
    desktop whose host is gone (disabled, down, or removed) is handed to a host whose
    worker runs, so that its start or its deletion does not wait forever for a worker
    nobody runs. Its disk is on the shared storage; a desktop that may still run on its
    host (a down host's live desktops, which recovery handles) stays where it is."""
    hosts = Host.objects.filter(pk=desktop.host_id) if desktop.host_id is not None else None
    host = hosts.first() if hosts is not None else None
    if host is not None and host.enabled and host.status == HostStatus.UP:
        return {}
    current = Desktop.objects.filter(pk=desktop.pk).values_list("status", flat=True).first()
    if current not in DRAIN_REHOME:
        return {}
    target = _serving_target(desktop, source=host, room=room)
    if target is None:
        gone = f"Host {host.name} is out of service" if host else "Its host is gone"
        raise HostCannotTake(f"{gone}, and no other host can take this desktop right now.")
    audit_record(action=AuditVerb.DESKTOP_REHOMED, desktop=desktop, source=str(host),
                 target=target.name, reason="host gone")  # fmt: skip
    return {"host": target}


def _serving_target(desktop: Desktop, *, source: Host | None, room: bool) -> Host | None:
    """The least loaded host with room that may take a desktop from `source`; when none
    has room and room does not matter (a desktop to delete), the first that may."""
    hosts = hosts_taking_desktops(proven=True).select_for_update().order_by("pk")
    if source is not None:
        hosts = hosts.exclude(pk=source.pk)
    candidates = [host for host in hosts if networked(host)]
    best = host_least_loaded(candidates, desktop)
    return best if best is not None or room else next(iter(candidates), None)


def host_maintenance_set(*, actor: User, host: Host, enabled: bool) -> bool:
    """Put `host` in maintenance (it takes no new desktops, and is drained) or take it
    out; False when it already was so. Draining runs as a task, pass after pass."""
    with transaction.atomic():
        changed = Host.objects.filter(pk=host.pk, maintenance=not enabled).update(
            maintenance=enabled
        )
        host.maintenance = enabled
        if not changed:
            return False
        audit_record(
            action=AuditVerb.HOST_MAINTENANCE, actor=actor, name=host.name, enabled=enabled
        )
        if enabled:
            enqueue_task("vms.tasks.host_drain", host.pk, actor.pk)
    return True


def host_drain_pass(*, host_id: int, actor_id: int) -> bool:
    """One pass of draining a host in maintenance: start a live migration for each running
    desktop, re-home each stopped one. True while desktops are left to move (the task
    comes back); False when the host is empty, or out of maintenance."""
    host = Host.objects.filter(pk=host_id, maintenance=True).first()
    actor = User.objects.filter(pk=actor_id).first()
    if host is None or actor is None:
        return False
    for desktop in host_desktops(host=host).filter(status__in=DRAIN_LIVE):
        _drain_live(desktop, actor=actor)
    for desktop in host_desktops(host=host).filter(status__in=DRAIN_REHOME):
        _drain_rehome(desktop, actor=actor, source=host)
    return host_desktops(host=host).exists()


def host_desktops(*, host: Host) -> QuerySet[Desktop]:
    """The desktops that still live on `host` (what a drain must move)."""
    return Desktop.objects.filter(host=host).exclude(status=S.DELETED).select_related("host")


def _drain_live(desktop: Desktop, *, actor: User) -> None:
    try:
        desktop_act(actor=actor, desktop=desktop, action=ActionName.MIGRATE)
    except ServiceError as exc:
        # No room elsewhere, or its state moved on: the next pass tries again.
        log.info("drain: desktop %s stays for now: %s", desktop.pk, exc.message)


def _drain_rehome(desktop: Desktop, *, actor: User | None, source: Host) -> None:
    """A stopped desktop's disk is on storage every host shares: point it at another
    host (its domain is defined there at its next start) and forget it on this one. Not
    while work of an action runs on it (a restore, a backup: on this host's queue)."""
    with transaction.atomic():
        target = host_least_loaded(_rehome_targets(source), desktop)
        if target is None:
            return
        moved = Desktop.objects.filter(
            pk=desktop.pk, host=source, status=desktop.status, progress=""
        ).update(host=target)
        if not moved:
            return
        audit_record(
            action=AuditVerb.DESKTOP_REHOMED, actor=actor, desktop=desktop,
            source=source.name, target=target.name,
        )  # fmt: skip
        transaction.on_commit(partial(_forget_domain, source, desktop.domain_name))


def _rehome_targets(source: Host) -> list[Host]:
    candidates = hosts_taking_desktops(proven=True).select_for_update().exclude(pk=source.pk)
    return [host for host in candidates.order_by("pk") if networked(host)]


def _forget_domain(host: Host, name: str) -> None:
    try:
        hypervisor_for(host).undefine(name=name)
    except HypervisorError as exc:
        # Reconcile removes it later: it belongs to no desktop of this host any more.
        log.warning("could not undefine %s on %s: %s", name, host.name, exc.message)
