"""Console sessions: opening one when a relay admits a browser, keeping it while the
user may still see the running desktop, closing it once, ending someone else's session on
the owner's word, and reaping sessions nobody carries any more.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from vms.models import ConsoleSession, Desktop, DesktopStatus
from vms.roles import is_admin
from vms.selectors import (
    SPICE_FILE_RELAY,
    SPICE_FILE_VALID_S,
    desktops_visible_to,
    spice_set_opened,
)
from vms.services.consoles.errors import (
    CLOSE_ENDED_BY_OWNER,
    CLOSE_FORBIDDEN,
    CLOSE_STOPPED,
    ConsoleClosed,
    ConsoleRefused,
)
from vms.services.consoles.leases import (
    console_lease_drop,
    console_lease_renew,
    console_leases_lapsed,
    lease_seconds,
)
from vms.services.consoles.rules import (
    console_cap_check,
    console_mode_check,
    console_running_check,
)
from vms.services.consoles.tickets import TicketClaim
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.desktops.events import group_send_best_effort, push_console_sessions

log = logging.getLogger(__name__)
RELAYS_WITH_LEASES = ("channels", "gateway")
# The close reasons of a session its owner (or an admin) ended, and what the relays tell
# the browser of the person whose console it was.
ENDED_BY_OWNER = "ended by the desktop's owner"
ENDED_BY_ADMIN = "ended by an admin"
ENDED_MESSAGES = {
    ENDED_BY_OWNER: "The desktop's owner ended this console session.",
    ENDED_BY_ADMIN: "An admin ended this console session.",
}


def console_session_group(session_id: int) -> str:
    """Channels group of the relay carrying one console session."""
    return f"console-session.{session_id}"


def console_session_open(
    *, claim: TicketClaim, relay: str, source_ip: str | None
) -> ConsoleSession:
    """Re-check the claim now and record the session."""
    user = get_user_model().objects.filter(pk=claim.user_id, is_active=True).first()
    if user is None:
        raise PermissionDenied("The account is no longer active.")
    desktop = desktops_visible_to(user=user).filter(pk=claim.desktop_id).first()
    if desktop is None:
        raise PermissionDenied("You may not open this desktop.")
    console_mode_check(user=user, desktop=desktop, mode=claim.mode, reason=claim.reason)
    console_running_check(desktop=desktop)
    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=user.pk)
        console_cap_check(user=user)
        session = ConsoleSession.objects.create(
            desktop=desktop,
            user=user,
            mode=claim.mode,
            reason=claim.reason,
            relay=relay,
            source_ip=source_ip,
        )
        audit_record(
            action=AuditVerb.CONSOLE_OPEN,
            actor=user,
            desktop=desktop,
            source_ip=source_ip,
            mode=claim.mode,
            reason=claim.reason,
            relay=relay,
            session=session.pk,
        )
        Desktop.objects.filter(pk=desktop.pk).update(last_used_at=timezone.now())
    push_console_sessions(desktop_id=desktop.pk)
    return session


def console_session_close(
    *,
    session_id: int,
    reason: str,
    bytes_to_guest: int = 0,
    bytes_from_guest: int = 0,
    dropped_messages: int = 0,
    ended_at: datetime | None = None,
) -> bool:
    """Record the end of a session (once), drop its lease and tell the owner's pages.

    Returns whether this call ended it. A session its owner ended is already closed when
    its relay lets go; the relay's byte counts then go into a `console.tally` audit row
    (the session row is append-only).
    """
    with transaction.atomic():
        closed = ConsoleSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
            ended_at=ended_at or timezone.now(),
            close_reason=reason[:200],
            bytes_to_guest=bytes_to_guest,
            bytes_from_guest=bytes_from_guest,
            dropped_messages=dropped_messages,
        )
        if closed:
            _audit_close(
                session_id=session_id,
                reason=reason,
                bytes_to_guest=bytes_to_guest,
                bytes_from_guest=bytes_from_guest,
                dropped_messages=dropped_messages,
            )
        elif bytes_to_guest or bytes_from_guest or dropped_messages:
            _audit_tally_of_ended(
                session_id=session_id,
                bytes_to_guest=bytes_to_guest,
                bytes_from_guest=bytes_from_guest,
                dropped_messages=dropped_messages,
            )
    # After the row: a test (or reconcile) that sees no lease sees the end recorded.
    console_lease_drop(session_id=session_id)
    return bool(closed)


def _audit_tally_of_ended(*, session_id: int, **counts: Any) -> None:
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=session_id)
    if session.close_reason in ENDED_MESSAGES:
        audit_record(
            action=AuditVerb.CONSOLE_TALLY,
            actor=session.user,
            desktop=session.desktop,
            session=session_id,
            **counts,
        )


def _audit_close(*, session_id: int, reason: str, **counts: Any) -> None:
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=session_id)
    audit_record(
        action=AuditVerb.CONSOLE_CLOSE,
        actor=session.user,
        desktop=session.desktop,
        session=session_id,
        reason=reason,
        **counts,
    )
    push_console_sessions(desktop_id=session.desktop_id)


def console_session_end(
    *, actor: User, session: ConsoleSession, source_ip: str | None = None
) -> None:
    """The desktop's owner (or an admin) ends someone else's console session on it.

    The end is recorded at once (the owner's notice drops it, the user's session cap frees
    up) with a `console.end` audit row naming who ended it; then the relay carrying the
    session is told to drop the connection with CLOSE_ENDED_BY_OWNER. (The websockify
    gateway and the SPICE proxy hear it at their next re-check, within CONSOLE_RECHECK_S; an
    unused SPICE file is refused at the proxy from then on.)
    """
    desktop = session.desktop
    actor_owns = desktop.owner_id == actor.pk
    if session.user_id == desktop.owner_id or not (actor_owns or is_admin(actor)):
        raise PermissionDenied("Only the desktop's owner or an admin may end this session.")
    reason = ENDED_BY_OWNER if actor_owns else ENDED_BY_ADMIN
    with transaction.atomic():
        if not console_session_close(session_id=session.pk, reason=reason):
            raise ConsoleRefused("That console session had already ended.")
        audit_record(
            action=AuditVerb.CONSOLE_END,
            actor=actor,
            desktop=desktop,
            source_ip=source_ip,
            session=session.pk,
            user=session.user.get_username(),
            mode=session.mode,
        )
        transaction.on_commit(partial(_tell_relay_to_drop, session.pk, ENDED_MESSAGES[reason]))


def _tell_relay_to_drop(session_id: int, message: str) -> None:
    # Best effort: the relay's next re-check (console_session_keep) closes it all the same.
    event = {"type": "console.session.ended", "code": CLOSE_ENDED_BY_OWNER, "reason": message}
    group_send_best_effort(
        [console_session_group(session_id)], event, what=f"the end of console session {session_id}"
    )


def console_session_may_continue(*, session_id: int) -> bool:
    """Whether an open session's user may still see the desktop and it still runs."""
    session = ConsoleSession.objects.select_related("user").filter(pk=session_id).first()
    if session is None or not session.user.is_active or session.ended_at is not None:
        return False
    return (
        desktops_visible_to(user=session.user)
        .filter(pk=session.desktop_id, status=DesktopStatus.RUNNING)
        .exists()
    )


def console_session_keep(*, session_id: int, relay: str) -> ConsoleClosed | None:
    """A relay's periodic re-check: None when the session may go on (its lease for `relay`
    is renewed); otherwise how the relay closes it."""
    if console_session_may_continue(session_id=session_id):
        console_lease_renew(session_id=session_id, relay=relay)
        return None
    status, close_reason = (
        ConsoleSession.objects.filter(pk=session_id)
        .values_list("desktop__status", "close_reason")
        .first()
    ) or (None, "")
    if close_reason in ENDED_MESSAGES:
        return ConsoleClosed(CLOSE_ENDED_BY_OWNER, ENDED_MESSAGES[close_reason])
    if status is not None and status != DesktopStatus.RUNNING:
        # What the relays say when the services announce the change.
        return ConsoleClosed(CLOSE_STOPPED, f"The desktop is {status}.")
    return ConsoleClosed(CLOSE_FORBIDDEN, "Access to this desktop ended.")


def console_sessions_reap(*, now: datetime | None = None) -> int:
    """Close sessions nobody carries any more; return how many were closed.

    A relay session whose lease lapsed lost its relay process (killed, or its host went
    away); so did a SPICE file's session whose connection set the SPICE proxy carried. A
    SPICE file never used through the proxy ends when its password stops working.
    """
    now = now or timezone.now()
    open_rows = ConsoleSession.objects.filter(ended_at__isnull=True)
    old_files = open_rows.filter(
        relay=SPICE_FILE_RELAY, started_at__lte=now - timedelta(seconds=SPICE_FILE_VALID_S)
    ).annotate(opened=spice_set_opened())
    closed = 0
    for session_id, started_at in old_files.filter(opened=False).values_list("pk", "started_at"):
        ended_at = started_at + timedelta(seconds=SPICE_FILE_VALID_S)
        console_session_close(session_id=session_id, reason="SPICE file expired", ended_at=ended_at)
        closed += 1
    leased = open_rows.filter(
        relay__in=RELAYS_WITH_LEASES, started_at__lte=now - timedelta(seconds=lease_seconds())
    ).values_list("pk", flat=True)
    relay_rows = [*leased, *old_files.filter(opened=True).values_list("pk", flat=True)]
    try:
        lapsed = console_leases_lapsed(session_ids=relay_rows, now=now)
    except (OSError, redis.RedisError) as exc:
        log.warning("console leases unreadable; no relay session closed: %s", exc)
        return closed
    for session_id in lapsed:
        console_session_close(session_id=session_id, reason="the relay carrying it went away")
        closed += 1
    return closed
