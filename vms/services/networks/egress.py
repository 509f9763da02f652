"""What desktops may not reach: the management plane (docs/networks.md "The guard").

Every network's guard drops packets to these addresses whatever else it allows: each
host's console address and the address of its URI (host names resolved), the addresses of
REDIS_URL, DATABASE_URL, the SPICE proxy and the trusted proxies, loopback and link-local
(169.254.0.0/16, the cloud metadata service among them). Then DESKTOP_EGRESS_ALLOW passes
and DESKTOP_EGRESS_DENY (the site's management ranges) is dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit
from uuid import uuid4

import redis
from django.conf import settings
from django.db import transaction

from vms.models import Host
from vms.services.consoles.store import redis_client

log = logging.getLogger(__name__)
# Never reachable from a desktop, whatever the settings say.
ALWAYS_DENIED = ("127.0.0.0/8", "169.254.0.0/16")
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared, not bound


def resolve_ipv4(name: str) -> list[str]:
    """The IPv4 addresses of a host name or address ([] for a wildcard, a Unix socket or
    a name that does not resolve: logged, since the guard then cannot drop it by address;
    DESKTOP_EGRESS_DENY should cover it)."""
    name = name.strip().strip("[]")
    if name in WILDCARDS or name.startswith("/"):
        return []
    try:
        return [str(ipaddress.IPv4Address(name))]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        log.warning("desktop guard: %r does not resolve (%s); covered by ranges only", name, exc)
        return []
    return sorted({str(info[4][0]) for info in found})


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _service_names() -> list[str]:
    """The host names of the central services desktops must not reach."""
    database = settings.DATABASES["default"]
    names = [_url_host(settings.REDIS_URL), _url_host(settings.SPICE_PROXY_URL)]
    if "sqlite" not in str(database.get("ENGINE", "")):
        names.append(str(database.get("HOST") or ""))
    names.append(str(settings.SPICE_PROXY_BIND[0]))
    return names


def management_addresses(hosts: Iterable[Host] | None = None) -> list[str]:
    """The management plane's addresses and blocks (IPv4, loopback left to ALWAYS_DENIED),
    in a stable order."""
    chosen = Host.objects.all() if hosts is None else hosts
    names: list[str] = []
    for host in chosen:
        names += [host.console_address or "", _url_host(host.uri)]
    names += _service_names()
    found: list[str] = []
    for name in names:
        found += resolve_ipv4(name)
    found += [str(n) for n in settings.TRUSTED_PROXIES if n.version == 4]
    kept = [a for a in found if not ipaddress.IPv4Network(a).subnet_of(_LOOPBACK)]
    return list(dict.fromkeys([*kept, *ALWAYS_DENIED]))


def egress_allowed() -> tuple[str, ...]:
    return tuple(str(n) for n in settings.DESKTOP_EGRESS_ALLOW)


def egress_denied() -> tuple[str, ...]:
    return tuple(str(n) for n in settings.DESKTOP_EGRESS_DENY)


# --- the fleet's generation: one host's reconcile must not read every host --------------------

FLEET_GENERATION_KEY = "egress:fleet-generation"
_memo: dict[str, list[str]] = {}


def management_plane() -> list[str]:
    """`management_addresses()`, kept in this process until the fleet changes
    (`fleet_changed`): every host's reconcile builds every network's guard, and reading
    every host each time made a pass over the fleet grow with hosts x hosts."""
    try:
        generation = _fleet_generation()
    except redis.RedisError as exc:
        log.warning("desktop guard: no fleet generation in Redis (%s); reading the hosts", exc)
        return management_addresses()
    found = _memo.get(generation)
    if found is None:
        found = management_addresses()
        _memo.clear()
        _memo[generation] = found
    return list(found)


def _fleet_generation() -> str:
    client = redis_client()
    client.set(FLEET_GENERATION_KEY, uuid4().hex, nx=True)
    value: bytes | None = client.get(FLEET_GENERATION_KEY)  # type: ignore[assignment]
    return (value or b"").decode()


def fleet_changed() -> None:
    """A host's addresses (or the set of hosts) changed: every process reads the hosts
    again, now and once the change commits (a process that read the old rows under the
    new generation in between would keep them)."""
    fleet_generation_new()
    transaction.on_commit(fleet_generation_new)


def fleet_generation_new() -> None:
    """Forget every process's management plane (the tests' database changes under it)."""
    _memo.clear()
    try:
        redis_client().set(FLEET_GENERATION_KEY, uuid4().hex)
    except redis.RedisError as exc:
        log.warning("desktop guard: could not mark the fleet changed in Redis (%s)", exc)
