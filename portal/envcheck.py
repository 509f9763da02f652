"""Read environment settings so that a bad value names its variable.

django-environ raises ValueError (or worse) on a value it cannot parse; start-up should
instead stop with ImproperlyConfigured and say which variable is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")


def read(parser: Callable[..., T], name: str, *, default: Any) -> T:
    """Parse environment variable `name` with a django-environ parser, or fail loudly."""
    try:
        return parser(name, default=default)
    except (ValueError, TypeError, KeyError, ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"Environment variable {name} has a bad value: {exc}") from exc


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def flag(env: Any, name: str, *, default: bool) -> bool:
    """A strict boolean: django-environ reads any unknown word as False, silently."""
    raw = env.str(name, default=str(default)).strip().lower()
    if raw not in TRUE_WORDS | FALSE_WORDS:
        raise ImproperlyConfigured(
            f"Environment variable {name} must be true or false (got {raw!r})"
        )
    return raw in TRUE_WORDS


KNOWN_ENGINES = ("sqlite3", "postgresql", "mysql")


def database(config: dict[str, Any]) -> dict[str, Any]:
    """Refuse a DATABASE_URL whose scheme django-environ could not map to a backend."""
    if config.get("ENGINE", "").rsplit(".", 1)[-1] not in KNOWN_ENGINES:
        raise ImproperlyConfigured(
            "Environment variable DATABASE_URL must start with sqlite://, postgres:// or mysql://"
        )
    return config


def choice(value: str, name: str, allowed: Iterable[str]) -> str:
    """Return `value` if it is one of `allowed`, else fail naming the variable."""
    options = tuple(allowed)
    if value not in options:
        raise ImproperlyConfigured(f"Environment variable {name} must be one of {options}")
    return value


def redis_url(value: str) -> str:
    """Accept redis:// and rediss:// URLs only."""
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured("Environment variable REDIS_URL must be a redis:// URL")
    return value


def origins(values: list[str], name: str) -> list[str]:
    """Origins must carry a scheme (Django rejects them later with a vaguer message)."""
    for value in values:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ImproperlyConfigured(
                f"Environment variable {name}: {value!r} must start with http:// or https://"
            )
    return values


def token(value: str, name: str, *, min_length: int) -> str:
    """A shared secret: empty (switched off) or at least `min_length` characters, no spaces."""
    if value and (len(value) < min_length or any(c.isspace() for c in value)):
        raise ImproperlyConfigured(
            f"Environment variable {name} must be empty or at least {min_length} characters "
            "without spaces"
        )
    return value


def networks(values: list[str], name: str) -> list[IPv4Network | IPv6Network]:
    """Addresses or CIDR blocks (`10.0.0.5`, `10.0.0.0/24`, `fd00::/8`)."""
    parsed = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        try:
            parsed.append(ip_network(value, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"Environment variable {name}: {value!r} is not an IP address or CIDR block"
            ) from exc
    return parsed


def ipv4_networks(values: list[str], name: str) -> list[IPv4Network]:
    """IPv4 addresses or CIDR blocks (desktops' networks are IPv4 only), e.g. `10.0.0.0/8`."""
    parsed = []
    for network in networks(values, name):
        if not isinstance(network, IPv4Network):
            raise ImproperlyConfigured(
                f"Environment variable {name}: {network} is not an IPv4 address or CIDR block"
            )
        parsed.append(network)
    return parsed


def host_port(value: str, name: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, as a listening address: (host, port)."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ImproperlyConfigured(
            f"Environment variable {name} must be host:port with a port 1..65535 (got {value!r})"
        )
    return host, int(port_text)


def http_proxy_url(value: str, name: str) -> str:
    """An `http://host:port` address for clients to reach a proxy by (no path, no user)."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"Environment variable {name}: {exc}") from exc
    if (
        parts.scheme != "http"
        or not parts.hostname
        or port is None
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ImproperlyConfigured(
            f"Environment variable {name} must be http://host:port (got {value!r})"
        )
    return f"http://{parts.netloc}"


def url_of(address: tuple[str, int]) -> str:
    """`http://host:port` for a listening address (a wildcard one is reached on loopback)."""
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - not binding
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
