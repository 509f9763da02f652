"""Console sessions: opening one when a relay admits a browser, keeping it while the
user may still see the running desktop, closing it once, and reaping sessions nobody
carries any more.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from vms.models import ConsoleSession, Desktop, DesktopStatus
from vms.selectors import SPICE_FILE_RELAY, SPICE_FILE_VALID_S, desktops_visible_to
from vms.services.audit import audit_record
from vms.services.consoles.errors import CLOSE_FORBIDDEN, CLOSE_STOPPED, ConsoleClosed
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
from vms.services.events import push_console_sessions

log = logging.getLogger(__name__)
RELAYS_WITH_LEASES = ("channels", "gateway")


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
            action="console.open",
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
) -> None:
    """Record the end of a session (once), drop its lease and tell the owner's pages."""
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
    # After the row: a test (or reconcile) that sees no lease sees the end recorded.
    console_lease_drop(session_id=session_id)


def _audit_close(*, session_id: int, reason: str, **counts: Any) -> None:
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=session_id)
    audit_record(
        action="console.close",
        actor=session.user,
        desktop=session.desktop,
        session=session_id,
        reason=reason,
        **counts,
    )
    push_console_sessions(desktop_id=session.desktop_id)


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
    status = (
        ConsoleSession.objects.filter(pk=session_id)
        .values_list("desktop__status", flat=True)
        .first()
    )
    if status is not None and status != DesktopStatus.RUNNING:
        # What the relays say when the services announce the change.
        return ConsoleClosed(CLOSE_STOPPED, f"The desktop is {status}.")
    return ConsoleClosed(CLOSE_FORBIDDEN, "Access to this desktop ended.")


def console_sessions_reap(*, now: datetime | None = None) -> int:
    """Close sessions nobody carries any more; return how many were closed.

    A relay session whose lease lapsed lost its relay process (killed, or its host went
    away). A SPICE file's session ends when the file's password stops working.
    """
    now = now or timezone.now()
    open_rows = ConsoleSession.objects.filter(ended_at__isnull=True)
    closed = 0
    for session_id, started_at in open_rows.filter(
        relay=SPICE_FILE_RELAY, started_at__lte=now - timedelta(seconds=SPICE_FILE_VALID_S)
    ).values_list("pk", "started_at"):
        ended_at = started_at + timedelta(seconds=SPICE_FILE_VALID_S)
        console_session_close(session_id=session_id, reason="SPICE file expired", ended_at=ended_at)
        closed += 1
    relay_rows = list(
        open_rows.filter(
            relay__in=RELAYS_WITH_LEASES, started_at__lte=now - timedelta(seconds=lease_seconds())
        ).values_list("pk", flat=True)
    )
    try:
        lapsed = console_leases_lapsed(session_ids=relay_rows, now=now)
    except (OSError, redis.RedisError) as exc:
        log.warning("console leases unreadable; no relay session closed: %s", exc)
        return closed
    for session_id in lapsed:
        console_session_close(session_id=session_id, reason="the relay carrying it went away")
        closed += 1
    return closed
