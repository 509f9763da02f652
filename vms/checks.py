"""Django system checks of the portal's own settings (`manage.py check`, and `check
--deploy`; `migrate`, which every start runs, prints them too)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning


@register(Tags.security)
def metrics_behind_tls_proxy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Behind the TLS proxy with no METRICS_TOKEN, /metrics is answered only to loopback
    clients that a trusted proxy vouches for; say so, since monitoring then needs a token."""
    if not settings.TLS or settings.METRICS_TOKEN:
        return []
    return [
        CheckWarning(
            "PORTAL_TLS is on and METRICS_TOKEN is unset: /metrics answers only loopback "
            "clients, and a request through the proxy counts as loopback only when its proxy "
            "is in TRUSTED_PROXIES and reports a loopback client.",
            hint="Set METRICS_TOKEN (32 characters or more) and scrape with "
            "'Authorization: Bearer <METRICS_TOKEN>'.",
            id="vms.W001",
        )
    ]
