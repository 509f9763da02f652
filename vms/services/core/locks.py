"""A per-desktop lock for the worker paths that create things (provisioning, booting), and
a lock per network and host for preparing a network's definition there.

Two runs of the same task (a message delivered twice, reconcile re-queueing a slow task)
must not build the same volume at the same moment. The lock is released by the system
when its holder dies, so a SIGKILLed worker never leaves it taken.
"""

from __future__ import annotations

import fcntl
import logging
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from django.db import DatabaseError, connection

log = logging.getLogger(__name__)

# How long a run waits for another run on the same desktop before it gives up (and its
# task retries). Provisioning and booting take a few seconds.
LOCK_WAIT_S = 30.0
_LOCK_POLL_S = 0.1
_LOCK_CLASS = 0x4450  # first key of our PostgreSQL advisory locks ("DP")
_NETWORK_LOCK_CLASS = 0x4E45  # and of the networks' ("NE")
_LOCK_FILES = 256  # SQLite: lock files, shared by desktops that hash alike


class DesktopBusy(Exception):
    """Another worker is provisioning or booting this desktop right now; try again later."""


class NetworkBusy(Exception):
    """Another worker is preparing this network on this host right now; try again later."""


@contextmanager
def desktop_lock(desktop_id: UUID | str, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the desktop's provisioning lock; raise DesktopBusy after LOCK_WAIT_S.

    PostgreSQL: a session advisory lock, which the server drops by itself when the worker
    holding it dies (its connection closes), so a SIGKILLed worker never leaves it taken.
    SQLite (one machine): an flock on a file, which the kernel drops the same way.
    """
    key = int.from_bytes(UUID(str(desktop_id)).bytes[:4], "big", signed=True)
    busy = DesktopBusy(f"desktop {desktop_id} is being worked on by another task")
    with _lock(_LOCK_CLASS, key, f"desktop-{key % _LOCK_FILES}", busy, wait_s):
        yield


@contextmanager
def network_lock(network_id: int, host_id: int, *, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the lock of one network's definition on one host; raise NetworkBusy after
    `wait_s`. Two workers preparing it at once (two desktops started together) read the
    same DHCP host entries and both add the new one: libvirt refuses the second."""
    key = zlib.crc32(f"{network_id}/{host_id}".encode()) - 2**31  # a signed 32-bit key
    busy = NetworkBusy(f"network {network_id} on host {host_id} is being prepared")
    with _lock(_NETWORK_LOCK_CLASS, key, f"network-{key % _LOCK_FILES}", busy, wait_s):
        yield


@contextmanager
def _lock(lock_class: int, key: int, file: str, busy: Exception, wait_s: float) -> Iterator[None]:
    if connection.vendor == "postgresql":
        with _advisory_lock(lock_class, key, busy, wait_s):
            yield
    else:
        with _file_lock(file, busy, wait_s):
            yield


def _wait_for(take: Callable[[], bool], busy: Exception, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not take():
        if time.monotonic() >= deadline:
            raise busy
        time.sleep(_LOCK_POLL_S)


@contextmanager
def _advisory_lock(lock_class: int, key: int, busy: Exception, wait_s: float) -> Iterator[None]:
    def take() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [lock_class, key])
            row = cursor.fetchone()
        return bool(row and row[0])

    _wait_for(take, busy, wait_s)
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [lock_class, key])
        except DatabaseError:
            # The lock goes with the session; make sure the session goes too.
            log.warning("could not release a lock (%s); reconnecting", busy)
            connection.close()


@contextmanager
def _file_lock(name: str, busy: Exception, wait_s: float) -> Iterator[None]:
    folder = Path(tempfile.gettempdir()) / "desktop-portal-locks"
    folder.mkdir(mode=0o700, exist_ok=True)
    with open(folder / f"{name}.lock", "a+b") as handle:

        def take() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        _wait_for(take, busy, wait_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
