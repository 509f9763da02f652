"""ASGI entry point: HTTP through Django, WebSockets through Channels routing."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# The ASGI server never forks, so it may pool its database connections (portal/settings.py
# says why it should); DB_POOL_MAX_SIZE=0 turns the pool off.
os.environ.setdefault("DB_POOL_MAX_SIZE", "10")
django_asgi_app = get_asgi_application()

from portal.stackdumps import install_stack_dumps  # noqa: E402

# A server that stops answering can be asked where it waits: kill -USR1/-USR2 <pid>.
install_stack_dumps()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from vms.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
