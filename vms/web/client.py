"""Facts about the client of a request.

Behind the TLS proxy every request comes from the proxy's address, so the client's own
address is the one the proxy reports in X-Forwarded-For. That header is believed only when
the peer is one of settings.TRUSTED_PROXIES: anyone else could write it. django-axes uses
`client_ip` too (AXES_CLIENT_IP_CALLABLE), so lock-outs and audit rows name the same address.
`client_is_loopback` fails closed: a request that carries any forwarding header came through
a proxy, so it is on loopback only if a trusted proxy reported a loopback client.
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


# Headers by which a proxy reports the client it forwards (Django's META names). A request
# with any of them came through a proxy: the peer's own address says nothing about the client.
FORWARDING_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_FORWARDED",
    "HTTP_X_REAL_IP",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",  # what the TLS proxy must send (SECURE_PROXY_SSL_HEADER)
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_SERVER",
    "HTTP_X_FORWARDED_SCHEME",
    "HTTP_VIA",
    "HTTP_X_CLIENT_IP",
    "HTTP_CLIENT_IP",
    "HTTP_TRUE_CLIENT_IP",
    "HTTP_CF_CONNECTING_IP",
    "HTTP_X_CLUSTER_CLIENT_IP",
    "HTTP_X_ORIGINAL_FORWARDED_FOR",
)


def client_is_loopback(request: HttpRequest | Request) -> bool:
    """Whether the client is on this machine. Without forwarding headers, the peer is the
    client. With any, the request came through a proxy (a TLS proxy on this machine connects
    from loopback for everyone): only a trusted proxy's X-Forwarded-For can then name a
    loopback client, and nothing else counts, so an untrusted proxy fails closed."""
    meta = request.META
    remote_addr = meta.get("REMOTE_ADDR", "")
    if not any(meta.get(name) for name in FORWARDING_HEADERS):
        address = _parse(remote_addr)
        return address is not None and address.is_loopback
    forwarded_for = meta.get("HTTP_X_FORWARDED_FOR", "")
    address, taken = _walk(remote_addr=remote_addr, forwarded_for=forwarded_for)
    return address is not None and taken > 0 and address.is_loopback


def _trusted(address: Address | None) -> bool:
    trusted: Sequence[Network] = settings.TRUSTED_PROXIES
    return address is not None and any(address in network for network in trusted)


def client_address(*, remote_addr: str, forwarded_for: str) -> str | None:
    """Walk X-Forwarded-For from the right while the hop that wrote each entry is a trusted
    proxy; the first address written by a trusted proxy about an untrusted peer is the
    client. Entries further left were written by the client itself and are ignored."""
    address, _ = _walk(remote_addr=remote_addr, forwarded_for=forwarded_for)
    return None if address is None else str(address)


def _walk(*, remote_addr: str, forwarded_for: str) -> tuple[Address | None, int]:
    """`client_address`, and how many X-Forwarded-For entries it took (0: the peer)."""
    address = _parse(remote_addr)
    if address is None:
        return None, 0
    taken = 0
    for entry in reversed(forwarded_for.split(",")):
        if not _trusted(address):
            break
        reported = _parse(entry)
        if reported is None:
            break
        address, taken = reported, taken + 1
    return address, taken


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
