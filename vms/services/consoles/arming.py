"""Arming a guest's display: a one-off password set through libvirt, and where it listens.

QEMU keeps one password per display: whoever sets one holds the desktop's arm lock (in
Redis, shared by both relays, the SPICE file and every process) until the password has
been used (a relay's VNC handshake) or handed over (a SPICE file). `console_arm` takes
the lock, arms, and lets the lock go when its block ends:

    with console_arm(session=session) as access: ...         # blocking code
    async with console_arm(session=session) as access: ...   # asyncio (the Channels relay)
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from types import TracebackType

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.asyncio.lock import Lock as AsyncLock
from redis.lock import Lock

from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleSession, Desktop
from vms.selectors import SPICE_FILE_RELAY, SPICE_FILE_VALID_S
from vms.services.consoles.errors import DisplayUnreachable
from vms.services.consoles.sessions import console_session_close
from vms.services.consoles.store import redis_client
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)
# A relay sets a fresh VNC password per session; it only has to outlive the handshake.
SESSION_PASSWORD_VALID_S = 30
ARM_LOCK_TIMEOUT_S = 15
LOCK_FAILURES = (OSError, redis.RedisError)  # redis' LockError is a RedisError
UNREACHABLE = "The desktop's display cannot be reached right now."


@dataclass(frozen=True)
class GuestAccess:
    """Where the guest's display listens and its one-off password (never sent onwards)."""

    endpoint: ConsoleEndpoint
    password: str = field(repr=False)


def arm_lock_name(desktop_id: object) -> str:
    return f"console-arm:{desktop_id}"


class console_arm:
    """Hold the desktop's arm lock, set a one-off password on the session's display, and
    give where it listens; the lock goes when the block ends.

    A relay's password is a VNC one (8 characters) that only has to outlive its handshake;
    a SPICE file's works for `SPICE_FILE_VALID_S`. When the display cannot be armed (libvirt
    fails, or the lock is not free in time) the session is closed and DisplayUnreachable
    raised.
    """

    def __init__(self, *, session: ConsoleSession) -> None:
        self.session = session
        self._lock: Lock | None = None
        self._async_client: redis.asyncio.Redis | None = None
        self._async_lock: AsyncLock | None = None

    def _lock_name(self) -> str:
        return arm_lock_name(self.session.desktop_id)

    # -- blocking code (the gateway, the SPICE file) ---------------------------------------

    def __enter__(self) -> GuestAccess:
        lock = redis_client().lock(
            self._lock_name(), timeout=ARM_LOCK_TIMEOUT_S, blocking_timeout=ARM_LOCK_TIMEOUT_S
        )
        try:
            taken = lock.acquire()
        except LOCK_FAILURES as exc:
            raise _lock_failed(self.session, exc) from exc
        if not taken:
            raise _lock_failed(self.session, None)
        self._lock = lock
        try:
            return _arm(self.session)
        except BaseException:
            self._release(failing=True)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(failing=exc is not None)

    def _release(self, *, failing: bool) -> None:
        assert self._lock is not None
        try:
            self._lock.release()
        except LOCK_FAILURES as exc:
            _release_failed(self.session, exc, failing=failing)

    # -- asyncio (the Channels relay) ------------------------------------------------------

    async def __aenter__(self) -> GuestAccess:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
        lock = client.lock(
            self._lock_name(), timeout=ARM_LOCK_TIMEOUT_S, blocking_timeout=ARM_LOCK_TIMEOUT_S
        )
        try:
            taken = await lock.acquire()
        except LOCK_FAILURES as exc:
            await client.aclose()
            raise await sync_to_async(_lock_failed)(self.session, exc) from exc
        if not taken:
            await client.aclose()
            raise await sync_to_async(_lock_failed)(self.session, None)
        self._async_client, self._async_lock = client, lock
        try:
            return await sync_to_async(_arm)(self.session)
        except BaseException:
            await self._release_async(failing=True)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._release_async(failing=exc is not None)

    async def _release_async(self, *, failing: bool) -> None:
        assert self._async_client is not None and self._async_lock is not None
        try:
            await self._async_lock.release()
        except LOCK_FAILURES as exc:
            await sync_to_async(_release_failed)(self.session, exc, failing=failing)
        finally:
            await self._async_client.aclose()


def _arm(session: ConsoleSession) -> GuestAccess:
    """Set the display's one-off password through libvirt and find where it listens."""
    desktop = Desktop.objects.select_related("host").get(pk=session.desktop_id)
    if desktop.host is None:  # a running desktop always has one
        raise _guest_unreachable(session, "the desktop is on no host")
    password, valid_for_s = _one_off_password(session)
    try:
        hypervisor = hypervisor_for(desktop.host)
        hypervisor.set_console_password(
            name=desktop.domain_name, password=password, valid_for_s=valid_for_s
        )
        endpoint = hypervisor.console_endpoint(name=desktop.domain_name)
    except HypervisorError as exc:
        raise _guest_unreachable(session, exc.message) from exc
    return GuestAccess(endpoint=endpoint, password=password)


def _guest_unreachable(session: ConsoleSession, detail: str) -> DisplayUnreachable:
    """libvirt could not arm the display: the session ends."""
    log.warning("console session %s: display not armed: %s", session.pk, detail)
    console_session_close(session_id=session.pk, reason=f"guest unreachable: {detail}")
    return DisplayUnreachable(UNREACHABLE)


def _one_off_password(session: ConsoleSession) -> tuple[str, int]:
    """A password and how long it works: a SPICE file's for its minute; a relay's is a VNC
    password (at most 8 characters) that only has to outlive the relay's handshake."""
    if session.relay == SPICE_FILE_RELAY:
        return secrets.token_urlsafe(18), SPICE_FILE_VALID_S
    return secrets.token_urlsafe(6)[:8], SESSION_PASSWORD_VALID_S


def _lock_failed(session: ConsoleSession, exc: Exception | None) -> DisplayUnreachable:
    """The lock could not be had (`exc` None: not free in time); the session ends."""
    log.warning("console session %s: arm lock unavailable: %s", session.pk, exc or "busy")
    console_session_close(session_id=session.pk, reason="display unreachable")
    return DisplayUnreachable(UNREACHABLE)


def _release_failed(session: ConsoleSession, exc: Exception, *, failing: bool) -> None:
    """The lock lapsed (or Redis went away) while the password was in use: someone may have
    armed the display again meanwhile, so what was armed is not to be trusted."""
    if failing:
        log.warning("console session %s: arm lock lost: %s", session.pk, exc)
        return
    raise _lock_failed(session, exc) from exc
