"""WebSocket routes (Channels)."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from vms.console.relay import ConsoleRelayConsumer

websocket_urlpatterns: list[URLPattern | URLResolver] = [
    path("ws/console/<uuid:desktop_id>/", ConsoleRelayConsumer.as_asgi()),
]
