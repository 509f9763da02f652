"""Console sessions: issuing tickets, and opening and closing sessions in the relay.

Rules (DESIGN.md section 4): the owner may open their desktop in full or view mode;
help-desk staff and admins get view-only by default, and full control of someone else's
desktop only with a stated reason. The desktop must be running, and each user has a cap
on open sessions. Everything is checked again when the relay connects.
"""

from __future__ import annotations

import configparser
import io
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from vms.console.leases import (
    console_lease_drop,
    console_lease_renew,
    console_leases_lapsed,
    lease_seconds,
)
from vms.console.tickets import (
    IssuedTicket,
    TicketBinding,
    TicketClaim,
    redis_client,
    ticket_store,
)
from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleMode, ConsoleSession, ConsoleType, Desktop, DesktopStatus
from vms.selectors import (
    SPICE_FILE_RELAY,
    SPICE_FILE_VALID_S,
    console_sessions_open,
    desktops_visible_to,
)
from vms.services.audit import audit_record
from vms.services.errors import InvalidTransition, ServiceError, ServiceUnavailable
from vms.services.events import push_console_sessions
from vms.services.hosts import hypervisor_for

log = logging.getLogger(__name__)
# The relay sets a fresh VNC password per session; it only has to outlive the handshake.
SESSION_PASSWORD_VALID_S = 30
# QEMU keeps one password per display: whoever sets one holds the desktop's arm lock
# until the password has been used (relays) or handed over (SPICE files).
ARM_LOCK_TIMEOUT_S = 15
RELAYS_WITH_LEASES = ("channels", "gateway")


class ConsoleRefused(ServiceError):
    """The console cannot be opened (the message says why)."""


class TooManyConsoles(ConsoleRefused):
    """The user is at their cap of open console sessions."""


class DisplayUnreachable(ConsoleRefused):
    """libvirt could not arm or locate the desktop's display."""


@dataclass(frozen=True)
class GuestAccess:
    """Where the guest's display listens and its one-off password (never sent onwards)."""

    endpoint: ConsoleEndpoint
    password: str = field(repr=False)


def console_mode_check(*, user: AbstractBaseUser, desktop: Desktop, mode: str, reason: str) -> None:
    """Raise unless `user` may open `desktop` in `mode` (visibility is checked by the caller)."""
    if mode not in ConsoleMode.values:
        raise ConsoleRefused("The mode must be 'full' or 'view'.")
    if desktop.owner_id != user.pk and mode == ConsoleMode.FULL and not reason.strip():
        raise PermissionDenied("Taking control of another user's desktop needs a reason.")


def default_mode(*, user: AbstractBaseUser, desktop: Desktop) -> str:
    """Owners get full control; help-desk and admins look (view-only) unless they ask."""
    return "full" if desktop.owner_id == user.pk else "view"


def _running_check(desktop: Desktop) -> None:
    if desktop.status != DesktopStatus.RUNNING:
        raise InvalidTransition(f"The desktop is {desktop.status}; start it to open its console.")


def _cap_check(user: AbstractBaseUser) -> None:
    open_sessions = console_sessions_open().filter(user=user).count()
    if open_sessions >= settings.CONSOLE_MAX_SESSIONS_PER_USER:
        raise TooManyConsoles(
            f"You already have {open_sessions} consoles open; close one to open another."
        )


def console_ticket_issue(
    *,
    user: AbstractBaseUser,
    desktop: Desktop,
    mode: str | None,
    reason: str,
    source_ip: str | None,
    binding: str = TicketBinding.SESSION,
) -> IssuedTicket:
    """Check the rules and mint a one-time ticket for the relay, bound as `binding` says."""
    mode = mode or default_mode(user=user, desktop=desktop)
    console_mode_check(user=user, desktop=desktop, mode=mode, reason=reason)
    _running_check(desktop)
    _cap_check(user)
    claim = TicketClaim(
        user_id=user.pk,
        desktop_id=str(desktop.pk),
        mode=mode,
        reason=reason.strip(),
        source_ip=source_ip,
        binding=binding,
    )
    try:
        issued = ticket_store(claim=claim)
    except (OSError, redis.RedisError) as exc:
        raise ServiceUnavailable("Consoles are unavailable right now; try again shortly.") from exc
    audit_record(
        action="console.ticket",
        actor=user,
        desktop=desktop,
        source_ip=source_ip,
        mode=mode,
        reason=claim.reason,
    )
    return issued


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
    _running_check(desktop)
    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=user.pk)
        _cap_check(user)
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


def console_arm(*, session: ConsoleSession) -> GuestAccess:
    """Set a one-off VNC password on the guest and find where its display listens.

    QEMU has one password at a time: callers hold the desktop's arm lock from here until
    their VNC handshake is done (see vms.console.guest).
    """
    desktop = Desktop.objects.select_related("host").get(pk=session.desktop_id)
    password = secrets.token_urlsafe(6)[:8]
    try:
        hypervisor = hypervisor_for(desktop.host)
        hypervisor.set_console_password(
            name=desktop.domain_name, password=password, valid_for_s=SESSION_PASSWORD_VALID_S
        )
        endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    except HypervisorError as exc:
        console_session_close(session_id=session.pk, reason=f"guest unreachable: {exc.message}")
        raise DisplayUnreachable("The desktop's display cannot be reached right now.") from exc
    return GuestAccess(endpoint=endpoint, password=password)


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


def console_session_keep(*, session_id: int, relay: str) -> bool:
    """Whether the session may go on; if so, renew its lease for its relay."""
    if not console_session_may_continue(session_id=session_id):
        return False
    console_lease_renew(session_id=session_id, relay=relay)
    return True


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


@contextmanager
def console_arm_lock(*, desktop_id: object) -> Iterator[None]:
    """Hold the desktop's display password while it is set and used (blocking code)."""
    with redis_client().lock(
        arm_lock_name(desktop_id), timeout=ARM_LOCK_TIMEOUT_S, blocking_timeout=ARM_LOCK_TIMEOUT_S
    ):
        yield


def arm_lock_name(desktop_id: object) -> str:
    return f"console-arm:{desktop_id}"


def spice_file_issue(*, claim: TicketClaim, source_ip: str | None) -> str:
    """Redeem-time half of the SPICE flow: a virt-viewer (.vv) file whose password works
    for `SPICE_FILE_VALID_S`.

    Only for SPICE desktops: a VNC password in a file would skip the relay and its
    view-only filter. virt-viewer has no view-only mode we could enforce, so the claim must
    be for full control (owners, or help-desk with a reason). The session stays open, and
    the owner sees the notice, for as long as the password works.
    """
    if claim.mode != ConsoleMode.FULL:
        raise PermissionDenied("A SPICE client file gives full control; ask for a full console.")
    desktop = Desktop.objects.select_related("host", "template").get(pk=claim.desktop_id)
    if desktop.template.console_type != ConsoleType.SPICE:
        raise ConsoleRefused("This desktop's display is VNC; open it in the browser.")
    session = console_session_open(claim=claim, relay=SPICE_FILE_RELAY, source_ip=source_ip)
    password = secrets.token_urlsafe(18)
    try:
        with console_arm_lock(desktop_id=desktop.pk):
            hypervisor = hypervisor_for(desktop.host)
            hypervisor.set_console_password(
                name=desktop.domain_name, password=password, valid_for_s=SPICE_FILE_VALID_S
            )
            endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    except (HypervisorError, redis.RedisError) as exc:
        console_session_close(session_id=session.pk, reason="display unreachable")
        raise DisplayUnreachable("The desktop's display cannot be reached right now.") from exc
    return virt_viewer_file(title=desktop.name, endpoint=endpoint, password=password)


def virt_viewer_file(*, title: str, endpoint: ConsoleEndpoint, password: str) -> str:
    """The [virt-viewer] file remote-viewer opens; it asks the client to delete it."""
    config = configparser.ConfigParser(interpolation=None)
    config["virt-viewer"] = {
        "type": endpoint.type,
        "host": endpoint.host,
        "port": str(endpoint.port),
        "password": password,
        "title": title.replace("\n", " "),
        "delete-this-file": "1",
        "toggle-fullscreen": "shift+f11",
        "release-cursor": "shift+f12",
    }
    if endpoint.tls_port:
        config["virt-viewer"]["tls-port"] = str(endpoint.tls_port)
    out = io.StringIO()
    config.write(out)
    return out.getvalue()
