"""Console tickets: random, single-use, short-lived permissions to open one console.

A ticket is 256 random bits, handed to the browser once. Redis keeps only its SHA-256,
with the claim (user, desktop, mode, reason) and a TTL of at most 60 s. Redeeming is one
GETDEL, so a ticket works once even when two relays race for it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import cast

import redis
from django.conf import settings
from django.utils import timezone

KEY_PREFIX = "console-ticket:"
_clients: dict[str, redis.Redis] = {}


class TicketBinding:
    """Who may present a ticket besides knowing it.

    SESSION: the browser session of the user it was issued to (the same-origin relay
    sees the session cookie). ADDRESS: a client at the address it was issued to (API-token
    scripts, which carry no session, and the gateway, which cannot see the session).
    """

    SESSION = "session"
    ADDRESS = "address"


@dataclass(frozen=True)
class TicketClaim:
    """What a ticket grants: one user, one desktop, one mode, presented as bound."""

    user_id: int
    desktop_id: str
    mode: str
    reason: str
    source_ip: str | None
    binding: str = TicketBinding.SESSION


@dataclass(frozen=True)
class IssuedTicket:
    """The secret (shown once), what it grants and when it stops working."""

    ticket: str
    expires_at: datetime
    mode: str


def redis_client() -> redis.Redis:
    """One connection pool per process and Redis URL (the URL may change in tests)."""
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _clients[url]


def _key(ticket: str) -> str:
    return KEY_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


def ticket_store(*, claim: TicketClaim) -> IssuedTicket:
    """Mint a ticket for `claim`; the caller has checked the user's rights."""
    ticket = secrets.token_urlsafe(32)
    ttl = int(settings.CONSOLE_TICKET_TTL_S)
    redis_client().set(_key(ticket), json.dumps(asdict(claim)), ex=ttl)
    expires_at = timezone.now() + timedelta(seconds=ttl)
    return IssuedTicket(ticket=ticket, expires_at=expires_at, mode=claim.mode)


def ticket_redeem(*, ticket: str) -> TicketClaim | None:
    """Use a ticket up: its claim, or None if it is unknown, expired or already used."""
    if not ticket or len(ticket) > 128:
        return None
    raw = cast(bytes | None, redis_client().getdel(_key(ticket)))
    if raw is None:
        return None
    return TicketClaim(**json.loads(raw))
