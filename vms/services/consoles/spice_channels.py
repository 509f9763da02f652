"""One ticket per SPICE console session, covering its channels.

spice-html5 opens one WebSocket per SPICE channel: main first, then display, inputs,
cursor... all with the same ticket (the console page puts it in each socket's
subprotocols). The main channel redeems it (`console_admit`: Origin, ticket, presenter,
rights, running desktop, session cap) and opens the ConsoleSession. Once QEMU has named
the SPICE session (SPICE_MSG_MAIN_INIT), the main channel's relay records a channel grant
under the ticket's hash: later sockets presenting the same ticket, from the same user and
address, for the same desktop, are admitted as channels of that session, and only while
the session is open. A channel must link with the grant's SPICE session id.

Which channel types a mode gets is a console rule: view-only never gets INPUTS (nor
anything that could type, paste or pass devices: usbredir, smartcard, webdav, port).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import cast

from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleMode, ConsoleSession, ConsoleType, Desktop
from vms.services.consoles.admission import Knock, console_admit, ticket_from_protocols
from vms.services.consoles.errors import (
    CLOSE_BAD_TICKET,
    CLOSE_FORBIDDEN,
    ConsoleClosed,
    DisplayUnreachable,
)
from vms.services.consoles.sessions import console_session_close, console_session_may_continue
from vms.services.consoles.store import redis_client
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)

GRANT_PREFIX = "console-spice-channels:"
BYTES_PREFIX = "console-spice-bytes:"
GRANT_TTL_S = 24 * 3600  # the session's own end (checked on every use) is what counts

# SPICE channel types (spice-protocol enums.h).
SPICE_MAIN, SPICE_DISPLAY, SPICE_INPUTS, SPICE_CURSOR, SPICE_PLAYBACK = 1, 2, 3, 4, 5
SPICE_CHANNELS_BY_MODE = {
    ConsoleMode.VIEW: frozenset({SPICE_MAIN, SPICE_DISPLAY, SPICE_CURSOR, SPICE_PLAYBACK}),
    ConsoleMode.FULL: frozenset(
        {SPICE_MAIN, SPICE_DISPLAY, SPICE_INPUTS, SPICE_CURSOR, SPICE_PLAYBACK}
    ),
}


@dataclass(frozen=True)
class SpiceAdmission:
    """A SPICE socket let in: its console session, and whether it opened it (the main
    channel) or joins it (then `spice_session_id` is the id it must link with)."""

    session: ConsoleSession
    main: bool
    spice_session_id: int | None = None


def spice_channel_allowed(*, mode: str, channel_type: int) -> bool:
    """Whether a session of `mode` may link a channel of `channel_type`."""
    return channel_type in SPICE_CHANNELS_BY_MODE.get(ConsoleMode(mode), frozenset())


def spice_endpoint(*, session: ConsoleSession) -> ConsoleEndpoint:
    """Where the session's desktop's display listens (libvirt's word), without arming it:
    a channel's link starts with this; the password is set only for its ticket."""
    desktop = Desktop.objects.select_related("host").get(pk=session.desktop_id)
    if desktop.host is None:
        raise DisplayUnreachable("The desktop is on no host.")
    try:
        return hypervisor_for(desktop.host).console_endpoint(name=desktop.domain_name)
    except HypervisorError as exc:
        log.warning("console session %s: display not found: %s", session.pk, exc.message)
        raise DisplayUnreachable("The desktop's display cannot be reached right now.") from exc


def spice_admit(*, knock: Knock, relay: str) -> SpiceAdmission:
    """Admit a SPICE socket: a fresh ticket opens a session (the main channel), a ticket
    whose session is open joins it (a later channel); anything else is refused."""
    try:
        session = console_admit(knock=knock, relay=relay)
    except ConsoleClosed as refusal:
        if refusal.code != CLOSE_BAD_TICKET:
            raise
        joined = _channel_admit(knock=knock)
        if joined is None:
            raise
        return joined
    desktop = Desktop.objects.select_related("template").get(pk=session.desktop_id)
    if desktop.template.console_type != ConsoleType.SPICE:
        console_session_close(session_id=session.pk, reason="not a SPICE desktop")
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This desktop's display is VNC, not SPICE.")
    return SpiceAdmission(session=session, main=True)


def _channel_admit(*, knock: Knock) -> SpiceAdmission | None:
    ticket = ticket_from_protocols(knock.protocols)
    raw = cast(bytes | None, redis_client().get(_grant_key(ticket))) if ticket else None
    if raw is None:
        return None
    grant = json.loads(raw)
    # The main channel's presenter: the same browser session where the relay sees it, and
    # always the same address.
    same_user = not knock.sees_session or knock.session_user_id == grant["user_id"]
    if not same_user or knock.source_ip != grant["source_ip"]:
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket belongs to someone else.")
    if knock.desktop_id is not None and knock.desktop_id != grant["desktop_id"]:
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console ticket is for another desktop.")
    if not console_session_may_continue(session_id=grant["session_id"]):
        raise ConsoleClosed(CLOSE_FORBIDDEN, "This console session has ended.")
    session = ConsoleSession.objects.get(pk=grant["session_id"])
    return SpiceAdmission(session=session, main=False, spice_session_id=grant["spice_session_id"])


def spice_channels_open(*, session: ConsoleSession, knock: Knock, spice_session_id: int) -> None:
    """The main channel is up and QEMU named its SPICE session: let its channels in."""
    grant = {
        "session_id": session.pk,
        "user_id": session.user_id,
        "desktop_id": str(session.desktop_id),
        "source_ip": knock.source_ip,
        "spice_session_id": spice_session_id,
    }
    key = _grant_key(ticket_from_protocols(knock.protocols))
    redis_client().set(key, json.dumps(grant), ex=GRANT_TTL_S)


def spice_channels_close(*, knock: Knock, session_id: int) -> tuple[int, int, int]:
    """The main channel ends: no channel may join any more. Returns the byte and dropped
    counts the session's channels reported meanwhile (to, from the guest; dropped)."""
    client = redis_client()
    client.delete(_grant_key(ticket_from_protocols(knock.protocols)))
    key = f"{BYTES_PREFIX}{session_id}"
    counts = cast(dict[bytes, bytes], client.hgetall(key))
    client.delete(key)
    return tuple(int(counts.get(field, 0)) for field in (b"to", b"from", b"dropped"))  # type: ignore[return-value]


def spice_channel_tally(
    *, session_id: int, bytes_to_guest: int, bytes_from_guest: int, dropped_messages: int
) -> None:
    """A channel's counts since its last tally: kept for the session's close while it is
    open, else written as a `console.tally` audit row (the session row is closed once)."""
    if not (bytes_to_guest or bytes_from_guest or dropped_messages):
        return
    if console_session_may_continue(session_id=session_id):
        key = f"{BYTES_PREFIX}{session_id}"
        pipe = redis_client().pipeline()
        pipe.hincrby(key, "to", bytes_to_guest)
        pipe.hincrby(key, "from", bytes_from_guest)
        pipe.hincrby(key, "dropped", dropped_messages)
        pipe.expire(key, GRANT_TTL_S)
        pipe.execute()
        return
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=session_id)
    audit_record(
        action=AuditVerb.CONSOLE_TALLY,
        actor=session.user,
        desktop=session.desktop,
        session=session_id,
        bytes_to_guest=bytes_to_guest,
        bytes_from_guest=bytes_from_guest,
        dropped_messages=dropped_messages,
    )


def _grant_key(ticket: str) -> str:
    return GRANT_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()
