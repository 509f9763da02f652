"""Arming a guest's display: a one-off password set through libvirt, and where it listens.

QEMU keeps one password per display: whoever sets one holds the desktop's arm lock (in
Redis, shared by both relays and every process) until the password has been used (the
relays' VNC handshake) or handed over (a SPICE file).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleSession, Desktop
from vms.services.consoles.errors import DisplayUnreachable
from vms.services.consoles.sessions import console_session_close
from vms.services.consoles.store import redis_client
from vms.services.hosts import hypervisor_for

# The relay sets a fresh VNC password per session; it only has to outlive the handshake.
SESSION_PASSWORD_VALID_S = 30
ARM_LOCK_TIMEOUT_S = 15


@dataclass(frozen=True)
class GuestAccess:
    """Where the guest's display listens and its one-off password (never sent onwards)."""

    endpoint: ConsoleEndpoint
    password: str = field(repr=False)


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


@contextmanager
def console_arm_lock(*, desktop_id: object) -> Iterator[None]:
    """Hold the desktop's display password while it is set and used (blocking code)."""
    with redis_client().lock(
        arm_lock_name(desktop_id), timeout=ARM_LOCK_TIMEOUT_S, blocking_timeout=ARM_LOCK_TIMEOUT_S
    ):
        yield


def arm_lock_name(desktop_id: object) -> str:
    return f"console-arm:{desktop_id}"
