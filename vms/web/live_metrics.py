"""The monitoring part of the live feed: a page's feed joins the metrics groups of the
hosts its desktops run on (its own desktops, and those it watches) and forwards only
those desktops' values; admins' feeds also forward every host's values."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db.models import Q

from vms.selectors import desktops_visible_to
from vms.services.metrics.push import metrics_host_group


class MetricsFeedMixin(AsyncJsonWebsocketConsumer):  # type: ignore[misc,unused-ignore]
    """Mixed into the live feed's consumer (vms.web.live), which keeps `groups_joined`."""

    groups_joined: list[str]
    metrics_watched: list[str]
    metrics_ids: frozenset[str] = frozenset()

    async def metrics_follow(self, watched: list[str] | None = None) -> None:
        """Join the host groups of the page's desktops; call again when what the page
        watches changes, or one of its desktops changed (it may have moved hosts)."""
        if watched is not None:
            self.metrics_watched = [*getattr(self, "metrics_watched", []), *watched]
        watching = getattr(self, "metrics_watched", [])
        ids, hosts = await database_sync_to_async(self._metrics_scope)(watching)
        self.metrics_ids = frozenset(ids)
        for group in (metrics_host_group(name) for name in hosts):
            if group not in self.groups_joined:
                self.groups_joined.append(group)
                await self.channel_layer.group_add(group, self.channel_name)

    def _metrics_scope(self, watched: list[str]) -> tuple[set[str], set[str]]:
        user = self.scope["user"]
        rows = (
            desktops_visible_to(user=user)
            .filter(Q(owner=user) | Q(pk__in=watched), host__isnull=False)
            .values_list("pk", "host__name")
        )
        return {str(pk) for pk, _ in rows}, {host for _, host in rows}

    async def desktop_metrics(self, event: dict[str, Any]) -> None:
        mine = [m for m in event["metrics"] if m["desktop_id"] in self.metrics_ids]
        if mine:
            await self.send_json({"kind": "metrics", "metrics": mine})

    async def host_metrics(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": "host_metrics", "metrics": event["metrics"]})
