"""Pushing fresh monitoring values to open pages over the Channels layer: each desktop's
to everyone watching it and to its owner's pages, each host's to admins' pages. All the
sends of one pass go out in one event-loop run (a pass of 100 desktops is 201 sends)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from redis.exceptions import RedisError

from vms.models import Host
from vms.models_metrics import DesktopLoad, HostUsage
from vms.services.events import desktop_group, user_group

log = logging.getLogger(__name__)
ADMINS_GROUP = "admins.hosts"  # admins' pages: every host's live values


def metrics_push(
    *, host: Host, loads: list[DesktopLoad], owners: dict[Any, int], usage: HostUsage
) -> None:
    """Send one pass's values; best effort (the charts also load their history)."""
    layer = get_channel_layer()
    if layer is None:
        return
    sends: list[tuple[str, dict[str, Any]]] = []
    for load in loads:
        message = {"type": "desktop.metrics", "metrics": desktop_values(load)}
        sends += [
            (desktop_group(load.desktop_id), message),
            (user_group(owners[load.desktop_id]), message),
        ]
    sends.append((ADMINS_GROUP, {"type": "host.metrics", "metrics": host_values(host, usage)}))
    try:
        async_to_sync(_send_all)(layer, sends)
    except (RedisError, OSError):
        log.warning("could not push the metrics of host %s", host.name)


async def _send_all(layer: Any, sends: list[tuple[str, dict[str, Any]]]) -> None:
    await asyncio.gather(*(layer.group_send(group, message) for group, message in sends))


def desktop_values(load: DesktopLoad) -> dict[str, Any]:
    """A desktop's latest values, as pages receive them."""
    return {
        "desktop_id": str(load.desktop_id),
        "t": int(load.sampled_at.timestamp()),
        "cpu_percent": load.cpu_percent,
        "memory_mib": load.memory_mib,
    }


def host_values(host: Host, usage: HostUsage) -> dict[str, Any]:
    """A host's latest values, as admins' pages receive them."""
    return {
        "host": host.name,
        "t": int(usage.sampled_at.timestamp()),
        "cpu_percent": usage.cpu_percent,
        "memory_used_mib": usage.memory_used_mib,
        "memory_total_mib": usage.memory_total_mib,
        "running_desktops": usage.running_desktops,
    }
