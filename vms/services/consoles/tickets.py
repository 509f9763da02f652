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
from enum import StrEnum
from typing import cast

import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from vms.models import Desktop
from vms.services.consoles.rules import (
    console_cap_check,
    console_mode_check,
    console_mode_default,
    console_running_check,
)
from vms.services.consoles.store import redis_client
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import ServiceUnavailable

KEY_PREFIX = "console-ticket:"
MAX_TICKET_CHARS = 128


class TicketBinding(StrEnum):
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
    binding: TicketBinding = TicketBinding.SESSION


@dataclass(frozen=True)
class IssuedTicket:
    """The secret (shown once), what it grants and when it stops working."""

    ticket: str
    expires_at: datetime
    mode: str


def console_ticket_issue(
    *,
    user: User,
    desktop: Desktop,
    mode: str | None,
    reason: str,
    source_ip: str | None,
    binding: TicketBinding = TicketBinding.SESSION,
) -> IssuedTicket:
    """Check the rules and mint a one-time ticket for the relay, bound as `binding` says."""
    mode = mode or console_mode_default(user=user, desktop=desktop)
    console_mode_check(user=user, desktop=desktop, mode=mode, reason=reason)
    console_running_check(desktop=desktop)
    console_cap_check(user=user)
    claim = TicketClaim(
        user_id=user.pk,
        desktop_id=str(desktop.pk),
        mode=mode,
        reason=reason.strip(),
        source_ip=source_ip,
        binding=binding,
    )
    try:
        issued = _store(claim=claim)
    except (OSError, redis.RedisError) as exc:
        raise ServiceUnavailable("Consoles are unavailable right now; try again shortly.") from exc
    audit_record(
        action=AuditVerb.CONSOLE_TICKET,
        actor=user,
        desktop=desktop,
        source_ip=source_ip,
        mode=mode,
        reason=claim.reason,
    )
    return issued


def console_ticket_redeem(*, ticket: str) -> TicketClaim | None:
    """Use a ticket up: its claim, or None if it is unknown, expired or already used."""
    if not ticket or len(ticket) > MAX_TICKET_CHARS:
        return None
    raw = cast(bytes | None, redis_client().getdel(_key(ticket)))
    if raw is None:
        return None
    fields = json.loads(raw)
    fields["binding"] = TicketBinding(fields["binding"])
    return TicketClaim(**fields)


def _store(*, claim: TicketClaim) -> IssuedTicket:
    """Mint a ticket for `claim`; the caller has checked the user's rights."""
    ticket = secrets.token_urlsafe(32)
    ttl = int(settings.CONSOLE_TICKET_TTL_S)
    redis_client().set(_key(ticket), json.dumps(asdict(claim)), ex=ttl)
    expires_at = timezone.now() + timedelta(seconds=ttl)
    return IssuedTicket(ticket=ticket, expires_at=expires_at, mode=claim.mode)


def _key(ticket: str) -> str:
    return KEY_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()
