"""WebSocket routes (Channels)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from vms.console.relay import ConsoleRelayConsumer
from vms.console.spicerelay import SpiceRelayConsumer
from vms.web.live import DesktopEventsConsumer

websocket_urlpatterns: list[URLPattern | URLResolver] = [
    path("ws/console/<uuid:desktop_id>/", ConsoleRelayConsumer.as_asgi()),
    path("ws/spice/<uuid:desktop_id>/", SpiceRelayConsumer.as_asgi()),
    path("ws/desktops/", DesktopEventsConsumer.as_asgi()),
]
