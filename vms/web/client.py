"""Facts about the client of a request.

Behind the TLS proxy every request comes from the proxy's address, so the client's own
address is the one the proxy reports in X-Forwarded-For. That header is believed only when
the peer is one of settings.TRUSTED_PROXIES: anyone else could write it. django-axes uses
`client_ip` too (AXES_CLIENT_IP_CALLABLE), so lock-outs and audit rows name the same address.
WebSockets (the console relay, the live feed) read the same facts from their ASGI scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework.request import Request

from vms.services.consoles.admission import forwarded_secure, origin_allowed

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def client_ip(request: HttpRequest | Request) -> str | None:
    """The client's address: the peer's, or the one trusted proxies report for it."""
    return client_address(
        remote_addr=request.META.get("REMOTE_ADDR", ""),
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR", ""),
    )


def client_address(*, remote_addr: str, forwarded_for: str) -> str | None:
    """Walk X-Forwarded-For from the right while the hop that wrote each entry is a trusted
    proxy; the first address written by a trusted proxy about an untrusted peer is the
    client. Entries further left were written by the client itself and are ignored."""
    address = _parse(remote_addr)
    if address is None:
        return None
    trusted: Sequence[Network] = settings.TRUSTED_PROXIES
    for entry in reversed(forwarded_for.split(",")):
        if not any(address in network for network in trusted):
            break
        reported = _parse(entry)
        if reported is None:
            break
        address = reported
    return str(address)


def scope_header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """One header of an ASGI scope, decoded as HTTP headers are (latin-1)."""
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def scope_is_secure(scope: Mapping[str, Any]) -> bool:
    """Whether the browser reached us over TLS (directly, or through the TLS proxy)."""
    if scope.get("scheme") in ("wss", "https"):
        return True
    return forwarded_secure(scope_header(scope, b"x-forwarded-proto"))


def scope_origin_allowed(scope: Mapping[str, Any]) -> bool:
    """`origin_allowed` for a Channels WebSocket."""
    return origin_allowed(
        scope_header(scope, b"origin"),
        host=scope_header(scope, b"host"),
        secure=scope_is_secure(scope),
    )


def _parse(text: str) -> Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
