"""How the console services say no: service errors for pages and the API, and
`ConsoleClosed` (a WebSocket close code and reason) for the relays."""

from __future__ import annotations

from vms.services.core.errors import ServiceError

CLOSE_PROTOCOL = 4400
CLOSE_BAD_TICKET = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_RUNNING = 4409
CLOSE_STOPPED = 4410
CLOSE_TOO_MANY = 4429
# The desktop's owner (or an admin) ended this help-desk session from the owner's notice.
CLOSE_ENDED_BY_OWNER = 4460
CLOSE_UNREACHABLE = 4502


class ConsoleRefused(ServiceError):
    """The console cannot be opened (the message says why)."""


class TooManyConsoles(ConsoleRefused):
    """The user is at their cap of open console sessions."""


class DisplayUnreachable(ConsoleRefused):
    """libvirt could not arm or locate the desktop's display."""


class ConsoleClosed(Exception):
    """Close the console WebSocket with `code` and a human-readable `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
