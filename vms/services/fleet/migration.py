"""Live migration: where a running desktop may move (`migration_target_choose`, the
"migrate" action's `prepare` in vms.services.desktops.actions), and the move itself, its
worker `desktop_migrate`, run by the source host's worker."""

from __future__ import annotations

import ipaddress
import time

from django.conf import settings
from django.db import transaction

from vms.hypervisor import HypervisorError, PowerState
from vms.models import Desktop, DesktopStatus, Host
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import HostCannotTake
from vms.services.desktops import transitions
from vms.services.desktops.events import push_desktop_changed
from vms.services.desktops.worker import desktop_fail, desktop_worker
from vms.services.fleet.hosts import hypervisor_for
from vms.services.fleet.placement import host_least_loaded, hosts_taking_desktops
from vms.services.networks.desktop_networks import interfaces_prepare


def migration_target_choose(*, desktop: Desktop, host: str = "") -> dict[str, Host]:
    """The host `desktop` migrates to, locked in the caller's transaction: the one named
    when it can take the desktop, else the least loaded host that may take it (see
    vms.services.fleet.placement). Both hosts need a network address (guests' memory travels
    between them)."""
    source = desktop.host
    if source is None or not networked(source):
        raise HostCannotTake(_no_network(source))
    others = hosts_taking_desktops(proven=True).select_for_update().exclude(pk=source.pk)
    candidates = list(others.order_by("pk"))
    if host:
        candidates = [h for h in candidates if h.name == host]
        if not candidates:
            raise HostCannotTake(_not_available(host, source))
    best = host_least_loaded([h for h in candidates if networked(h)], desktop)
    if best is None:
        raise HostCannotTake(_no_room(host))
    return {"migrate_to": best}


def networked(host: Host) -> bool:
    """Whether `host` has a network address (guests' memory and disks move between such)."""
    return not ipaddress.ip_address(host.console_address).is_loopback


def _no_network(host: Host | None) -> str:
    name = host.name if host is not None else "(none)"
    return (
        f"Host {name} has no network address (its console address is loopback): its "
        "desktops cannot migrate. Give it its management-network address first."
    )


def _not_available(name: str, source: Host) -> str:
    if name == source.name:
        return f"The desktop already runs on {name}."
    return (
        f"Host {name!r} cannot take desktops now: it is unknown, disabled, down or in maintenance."
    )


def _no_room(name: str) -> str:
    if name:
        return f"Host {name!r} has no room for this desktop, or no network address."
    return "No other host has room for this desktop right now."


S = DesktopStatus


@desktop_worker(when={S.MIGRATING})
def desktop_migrate(desktop: Desktop) -> None:
    """Move a running guest live to `migrate_to`: migrating -> running, on its new host.

    Idempotent for reconcile: a run that finds the guest already on the destination only
    records the move. On failure the guest keeps running where it was, and says why.
    """
    source, target = desktop.host, desktop.migrate_to
    assert source is not None
    if target is None or _runs_on(target, desktop):
        _migration_done(desktop, source=source, target=target)
        return
    started = time.monotonic()
    try:
        interfaces_prepare(desktop=desktop, host=target)  # its networks there first
        stats = hypervisor_for(source).migrate_live(
            name=desktop.domain_name, to_uri=target.uri, to_address=target.console_address,
            allow_unsafe=settings.MIGRATION_ALLOW_UNSAFE,
        )  # fmt: skip
    except HypervisorError as exc:
        _migration_failed(desktop, source=source, target=target, message=exc.message)
        return
    seconds = time.monotonic() - started
    _migration_done(desktop, source=source, target=target, seconds=seconds,
                    downtime_ms=stats.downtime_ms)  # fmt: skip


def _migration_done(
    desktop: Desktop,
    *,
    source: Host,
    target: Host | None,
    seconds: float | None = None,
    downtime_ms: int | None = None,
) -> None:
    moved_to = target or source
    seconds = None if seconds is None else round(seconds, 2)
    _migration_settle(
        desktop, event=AuditVerb.DESKTOP_MIGRATED, source=source, target=moved_to,
        fields={"host": moved_to}, seconds=seconds, downtime_ms=downtime_ms,
    )  # fmt: skip


def _migration_failed(desktop: Desktop, *, source: Host, target: Host, message: str) -> None:
    if not _runs_on(source, desktop):
        desktop_fail(desktop_id=desktop.pk, message=message, cleanup=False)
        return
    note = f"Migration to {target.name} failed; the desktop keeps running on {source.name}."
    _migration_settle(
        desktop, event=AuditVerb.DESKTOP_MIGRATION_FAILED, source=source, target=target,
        fields={"last_error": note}, message=message,
    )  # fmt: skip


def _migration_settle(
    desktop: Desktop,
    *,
    event: AuditVerb,
    source: Host,
    target: Host,
    fields: dict[str, object],
    **detail: object,
) -> None:
    """migrating -> running with `fields` (once), its audit row and the live push."""
    with transaction.atomic():
        if transitions.compare_and_set(
            desktop_id=desktop.pk, old=S.MIGRATING, new=S.RUNNING, migrate_to=None, **fields
        ):
            audit_record(
                action=event, actor=None, desktop=desktop, source_ip=None,
                source=source.name, target=target.name, **detail,
            )  # fmt: skip
            push_desktop_changed(desktop_id=desktop.pk)


def _runs_on(host: Host, desktop: Desktop) -> bool:
    try:
        return hypervisor_for(host).state(name=desktop.domain_name) is PowerState.running
    except HypervisorError:
        return False
