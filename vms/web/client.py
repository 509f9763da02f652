"""Facts about the client of a request."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.request import Request


def client_ip(request: HttpRequest | Request) -> str | None:
    """The client's address as the server saw it (the proxy's, behind a proxy)."""
    return request.META.get("REMOTE_ADDR") or None
