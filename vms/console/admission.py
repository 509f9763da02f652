"""Letting a WebSocket in: the checks both console relays make when a browser connects.

The Channels relay and the websockify gateway call `console_admit`; a refusal is a
`ConsoleClosed` with a WebSocket close code and a reason the console page shows.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http.request import validate_host

from vms.console.services import (
    TooManyConsoles,
    console_session_open,
)
from vms.console.tickets import ticket_redeem
from vms.models import ConsoleSession
from vms.services.errors import InvalidTransition

log = logging.getLogger(__name__)
TICKET_PROTOCOL_PREFIX = "ticket."
# The subprotocol the relays agree to; the ticket rides beside it, never in the URL.
BINARY_PROTOCOL = "binary"


class ConsoleClosed(Exception):
    """Close the console WebSocket with `code` and a human-readable `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


CLOSE_BAD_TICKET = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_RUNNING = 4409
CLOSE_TOO_MANY = 4429
CLOSE_PROTOCOL = 4400
CLOSE_STOPPED = 4410
CLOSE_UNREACHABLE = 4502


def origin_allowed(origin: str | None) -> bool:
    """Whether a WebSocket's Origin names one of our allowed hosts (CVE-2015-0259 class)."""
    if not origin:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return validate_host(host, settings.ALLOWED_HOSTS)


def ticket_from_protocols(protocols: list[str]) -> str:
    """The ticket the browser put in its subprotocol list, or ''."""
    for protocol in protocols:
        if protocol.startswith(TICKET_PROTOCOL_PREFIX):
            return protocol[len(TICKET_PROTOCOL_PREFIX) :]
    return ""


def console_admit(
    *,
    origin: str | None,
    protocols: list[str],
    session_user_id: int | None,
    relay: str,
    source_ip: str | None,
    desktop_id: str | None = None,
) -> ConsoleSession:
    """Check the Origin, redeem the ticket, re-check the user's rights and the desktop.

    `session_user_id` is the user of the browser session when the relay can see it (the
    same-origin relay); the ticket must then belong to that same user.
    """
    if not origin_allowed(origin):
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This page's origin may not open consoles.")
    claim = ticket_redeem(ticket=ticket_from_protocols(protocols))
    if claim is None:
        raise ConsoleClosed(CLOSE_BAD_TICKET, "The console ticket is invalid, used or expired.")
    if session_user_id is not None and claim.user_id != session_user_id:
        log.warning(
            "console ticket of user %s presented by user %s", claim.user_id, session_user_id
        )
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket belongs to someone else.")
    if desktop_id is not None and claim.desktop_id != desktop_id:
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket is for another desktop.")
    try:
        return console_session_open(claim=claim, relay=relay, source_ip=source_ip)
    except PermissionDenied as exc:
        raise ConsoleClosed(CLOSE_FORBIDDEN, str(exc) or "Access refused.") from exc
    except InvalidTransition as exc:
        raise ConsoleClosed(CLOSE_NOT_RUNNING, exc.message) from exc
    except TooManyConsoles as exc:
        raise ConsoleClosed(CLOSE_TOO_MANY, exc.message) from exc
