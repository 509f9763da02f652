"""Live migration: where a running desktop may move. The move itself is the "migrate"
action of the table (vms.services.actions); its worker is `desktop_migrate`."""

from __future__ import annotations

import ipaddress

from vms.models import Desktop, Host
from vms.services.errors import HostCannotTake
from vms.services.placement import host_allocations, host_fits


def migration_target_choose(*, desktop: Desktop, host: str = "") -> dict[str, Host]:
    """The host `desktop` migrates to, locked in the caller's transaction: the one named
    when it can take the desktop, else the enabled, healthy host with the most free memory.
    Both hosts need a network address (guests' memory travels between them)."""
    source = desktop.host
    if source is None or not _networked(source):
        raise HostCannotTake(_no_network(source))
    others = Host.objects.select_for_update().filter(enabled=True, last_check_ok=True)
    candidates = list(others.exclude(pk=source.pk).order_by("pk"))
    if host:
        candidates = [h for h in candidates if h.name == host]
        if not candidates:
            raise HostCannotTake(_not_available(host, source))
    used = host_allocations()
    fitting = [h for h in candidates if _networked(h) and host_fits(h, used.get(h.pk, {}), desktop)]
    if not fitting:
        raise HostCannotTake(_no_room(host))
    best = max(
        fitting, key=lambda h: h.capacity_memory_mib - used.get(h.pk, {}).get("used_memory_mib", 0)
    )
    return {"migrate_to": best}


def _networked(host: Host) -> bool:
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
    return f"Host {name!r} cannot take desktops now: it is unknown, disabled or down."


def _no_room(name: str) -> str:
    if name:
        return f"Host {name!r} has no room for this desktop, or no network address."
    return "No other host has room for this desktop right now."
