"""Live migration: where a running desktop may move. The move itself is the "migrate"
action of the table (vms.services.actions); its worker is `desktop_migrate`."""

from __future__ import annotations

import ipaddress

from vms.models import Desktop, Host
from vms.services.errors import HostCannotTake
from vms.services.placement import host_least_loaded, hosts_taking_desktops


def migration_target_choose(*, desktop: Desktop, host: str = "") -> dict[str, Host]:
    """The host `desktop` migrates to, locked in the caller's transaction: the one named
    when it can take the desktop, else the least loaded host that may take it (see
    vms.services.placement). Both hosts need a network address (guests' memory travels
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
