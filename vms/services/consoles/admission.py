"""Letting a WebSocket in: the checks both console relays make when a browser connects.

The Channels relay and the websockify gateway call `console_admit`; a refusal is a
`ConsoleClosed` with a WebSocket close code and a reason the console page shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from vms.models import ConsoleSession
from vms.services.consoles.errors import (
    CLOSE_BAD_TICKET,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_RUNNING,
    CLOSE_TOO_MANY,
    ConsoleClosed,
    TooManyConsoles,
)
from vms.services.consoles.leases import console_lease_renew
from vms.services.consoles.sessions import console_session_open
from vms.services.consoles.tickets import TicketBinding, TicketClaim, console_ticket_redeem
from vms.services.core.errors import InvalidTransition

log = logging.getLogger(__name__)
TICKET_PROTOCOL_PREFIX = "ticket."
# The subprotocol the relays agree to; the ticket rides beside it, never in the URL.
BINARY_PROTOCOL = "binary"


def origin_allowed(origin: str | None, *, host: str | None, secure: bool) -> bool:
    """Whether a WebSocket's Origin is one of the portal's own (CVE-2015-0259 class).

    The rule of Django's CSRF Origin check: scheme, host and port equal the request's own
    (`host` is its Host header, honoured only when it is in ALLOWED_HOSTS), or the origin
    is in CSRF_TRUSTED_ORIGINS (where `https://*.example.com` admits subdomains).
    """
    if not origin or origin == "null":
        return False
    if host and _host_allowed(host) and origin == f"{'https' if secure else 'http'}://{host}":
        return True
    return _trusted_origin(origin)


def _host_allowed(host: str) -> bool:
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def _trusted_origin(origin: str) -> bool:
    trusted = settings.CSRF_TRUSTED_ORIGINS
    if origin in trusted:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return any(
        is_same_domain(parts.netloc, urlsplit(pattern).netloc[1:])
        for pattern in trusted
        if "*" in pattern and urlsplit(pattern).scheme == parts.scheme
    )


def forwarded_secure(forwarded_proto: str | None) -> bool:
    """Whether the TLS proxy in front says the browser spoke https (PORTAL_TLS only)."""
    header: tuple[str, str] | None = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header is None:
        return False
    return (forwarded_proto or "").split(",")[0].strip() == header[1]


def ticket_from_protocols(protocols: list[str]) -> str:
    """The ticket the browser put in its subprotocol list, or ''."""
    for protocol in protocols:
        if protocol.startswith(TICKET_PROTOCOL_PREFIX):
            return protocol[len(TICKET_PROTOCOL_PREFIX) :]
    return ""


@dataclass(frozen=True)
class Knock:
    """What a relay knows about a WebSocket that wants a console."""

    origin: str | None
    host: str | None
    secure: bool
    protocols: list[str]
    source_ip: str | None
    desktop_id: str | None
    # The logged-in user of the browser session; `sees_session` is False for a relay that
    # cannot see the portal's session cookie (the gateway, on its own origin).
    session_user_id: int | None = None
    sees_session: bool = True


def console_admit(*, knock: Knock, relay: str) -> ConsoleSession:
    """Check the Origin, redeem the ticket, check who presents it, re-check the user's
    rights and the desktop, record the session and start its lease for `relay`."""
    if not origin_allowed(knock.origin, host=knock.host, secure=knock.secure):
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This page's origin may not open consoles.")
    claim = console_ticket_redeem(ticket=ticket_from_protocols(knock.protocols))
    if claim is None:
        raise ConsoleClosed(CLOSE_BAD_TICKET, "The console ticket is invalid, used or expired.")
    _presenter_check(claim, knock)
    if knock.desktop_id is not None and claim.desktop_id != knock.desktop_id:
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket is for another desktop.")
    try:
        session = console_session_open(claim=claim, relay=relay, source_ip=knock.source_ip)
    except PermissionDenied as exc:
        raise ConsoleClosed(CLOSE_FORBIDDEN, str(exc) or "Access refused.") from exc
    except InvalidTransition as exc:
        raise ConsoleClosed(CLOSE_NOT_RUNNING, exc.message) from exc
    except TooManyConsoles as exc:
        raise ConsoleClosed(CLOSE_TOO_MANY, exc.message) from exc
    console_lease_renew(session_id=session.pk, relay=relay)
    return session


def _presenter_check(claim: TicketClaim, knock: Knock) -> None:
    """A ticket is not a bearer token: it works only for whom it was issued to.

    Session-bound tickets need that user's browser session where the relay can see it;
    address-bound tickets (API tokens), and every ticket at the gateway, need the address
    the ticket was issued to.
    """
    if knock.session_user_id is not None and claim.user_id != knock.session_user_id:
        log.warning(
            "console ticket of user %s presented by user %s", claim.user_id, knock.session_user_id
        )
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket belongs to someone else.")
    by_session = knock.sees_session and claim.binding == TicketBinding.SESSION
    if by_session and knock.session_user_id is None:
        raise ConsoleClosed(CLOSE_BAD_TICKET, "Log in to the portal to open this console.")
    if not by_session and (claim.source_ip is None or claim.source_ip != knock.source_ip):
        log.warning("console ticket of user %s presented from another address", claim.user_id)
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket was issued to another address.")
