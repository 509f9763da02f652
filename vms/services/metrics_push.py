"""Pushing fresh monitoring values to open pages over the Channels layer: each desktop's
to everyone watching it and to its owner's pages, each host's to admins' pages. All the
sends of one pass go out in one event-loop run, and only to groups someone listens to (a
pass of 100 desktops names 201 groups; most have no page open)."""

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
    listened = await _groups_with_members(layer, {group for group, _ in sends})
    await asyncio.gather(
        *(layer.group_send(group, message) for group, message in sends if group in listened)
    )


async def _groups_with_members(layer: Any, groups: set[str]) -> set[str]:
    """The groups someone listens to, asked in one pipeline per Redis server: most
    desktops have no page open, and a send to an empty group still costs two round trips.
    Reads channels_redis' group keys (pinned in requirements.txt); another layer is asked
    nothing and every group counts as listened to."""
    if not hasattr(layer, "_group_key") or not hasattr(layer, "consistent_hash"):
        return groups
    by_server: dict[int, list[str]] = {}
    for group in groups:
        by_server.setdefault(layer.consistent_hash(group), []).append(group)
    listened = set()
    for index, names in by_server.items():
        pipe = layer.connection(index).pipeline(transaction=False)
        for name in names:
            pipe.zcard(layer._group_key(name))
        counts = await pipe.execute()
        listened |= {name for name, count in zip(names, counts, strict=True) if count}
    return listened


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
