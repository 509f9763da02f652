"""Console rules (docs/architecture.md, section 4): tickets, admission, arming the
display, sessions, their leases and SPICE files. The relays in vms.console only move bytes
and speak RFB.

    tickets    console_ticket_issue / console_ticket_redeem
    admission  console_admit: Origin, ticket, presenter, then console_session_open
    sessions   console_session_open / _close / _keep / _end, console_sessions_reap
    arming     console_arm: a one-off display password under the desktop's arm lock
    spice      the virt-viewer file of a SPICE desktop
    spiceproxy what the SPICE proxy admits: one connection set per file, and its record
"""

from vms.services.consoles.admission import (
    BINARY_PROTOCOL,
    Knock,
    console_admit,
    forwarded_secure,
    origin_allowed,
)
from vms.services.consoles.arming import GuestAccess, console_arm
from vms.services.consoles.errors import (
    CLOSE_BAD_TICKET,
    CLOSE_ENDED_BY_OWNER,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_RUNNING,
    CLOSE_PROTOCOL,
    CLOSE_STOPPED,
    CLOSE_TOO_MANY,
    CLOSE_UNREACHABLE,
    ConsoleClosed,
    ConsoleRefused,
    DisplayUnreachable,
    TooManyConsoles,
)
from vms.services.consoles.rules import console_mode_default, console_socket_path
from vms.services.consoles.sessions import (
    console_session_close,
    console_session_end,
    console_session_group,
    console_session_keep,
    console_session_open,
    console_sessions_reap,
)
from vms.services.consoles.spice import console_spice_file_issue
from vms.services.consoles.tickets import (
    IssuedTicket,
    TicketBinding,
    TicketClaim,
    console_ticket_issue,
    console_ticket_redeem,
)

__all__ = [
    "BINARY_PROTOCOL",
    "CLOSE_BAD_TICKET",
    "CLOSE_ENDED_BY_OWNER",
    "CLOSE_FORBIDDEN",
    "CLOSE_NOT_RUNNING",
    "CLOSE_PROTOCOL",
    "CLOSE_STOPPED",
    "CLOSE_TOO_MANY",
    "CLOSE_UNREACHABLE",
    "ConsoleClosed",
    "ConsoleRefused",
    "DisplayUnreachable",
    "GuestAccess",
    "IssuedTicket",
    "Knock",
    "TicketBinding",
    "TicketClaim",
    "TooManyConsoles",
    "console_admit",
    "console_arm",
    "console_mode_default",
    "console_session_close",
    "console_session_end",
    "console_session_group",
    "console_session_keep",
    "console_session_open",
    "console_sessions_reap",
    "console_socket_path",
    "console_spice_file_issue",
    "console_ticket_issue",
    "console_ticket_redeem",
    "forwarded_secure",
    "origin_allowed",
]
