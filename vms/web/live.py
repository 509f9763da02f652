"""Live updates for open pages: a WebSocket that forwards desktop changes and console
watcher notices (sent by the services through the Channels layer) to the browser.

A user always receives their own desktops' events. Help-desk staff and admins may also
ask to watch desktops they are allowed to see: `{"watch": ["<desktop id>", ...]}`.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from vms.roles import is_admin
from vms.selectors import desktops_visible_to
from vms.services.desktops.events import desktop_group, user_group
from vms.services.metrics.push import ADMINS_GROUP
from vms.web.client import scope_origin_allowed
from vms.web.live_metrics import MetricsFeedMixin

MAX_WATCHED = 200


class DesktopEventsConsumer(MetricsFeedMixin, AsyncJsonWebsocketConsumer):  # type: ignore[misc,unused-ignore]
    """One open page's live feed."""

    groups_joined: list[str]

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not scope_origin_allowed(self.scope):
            await self.close(code=4403)
            return
        # Admins' pages also get every host's monitoring values (vms.services.metrics.push).
        self.groups_joined = [user_group(user.pk)] + ([ADMINS_GROUP] if is_admin(user) else [])
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.metrics_follow()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        wanted = content.get("watch") if isinstance(content, dict) else None
        if not isinstance(wanted, list):
            return
        ids = [str(item) for item in wanted[:MAX_WATCHED]]
        allowed = await database_sync_to_async(self._visible)(ids)
        for desktop_id in allowed:
            group = desktop_group(desktop_id)
            if group not in self.groups_joined:
                self.groups_joined.append(group)
                await self.channel_layer.group_add(group, self.channel_name)
        await self.metrics_follow(allowed)

    def _visible(self, ids: list[str]) -> list[str]:
        from django.core.exceptions import ValidationError

        try:
            rows = desktops_visible_to(user=self.scope["user"]).filter(pk__in=ids)
            return [str(pk) for pk in rows.values_list("pk", flat=True)]
        except ValidationError:  # not UUIDs: nothing to watch
            return []

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def desktop_changed(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": "desktop", "desktop": event["desktop"]})
        await self.metrics_follow()  # it may have moved hosts, or be new

    async def console_watchers(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"kind": "watchers", "desktop_id": event["desktop_id"], "watchers": event["watchers"]}
        )

    async def desktop_notice(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"kind": "notice", "desktop_id": event["desktop_id"], "text": event["text"]}
        )
