"""One libvirt connection per (process, URI), opened lazily and reopened when it breaks.

* A libvirt connection does not survive ``fork()`` (Celery prefork workers): the connection
  remembers the pid that opened it, and a child opens its own. The parent's connection object
  is kept referenced in the child, never closed there: closing it would talk over the socket
  the parent still uses.
* After libvirtd restarts, ``isAlive()`` turns false or the next call fails with a
  connection-type error; ``LibvirtConnection.call`` then reopens and retries the call once.
* libvirt prints every error to stderr by default; that is silenced here, errors reach
  callers as exceptions only.
* At exit, every process closes the connections it opened (``close_all``, registered with
  ``atexit``): one left to the interpreter's shutdown is closed by ``virConnect.__del__``
  after the libvirt module is gone, which prints a traceback (``'NoneType' object has no
  attribute 'virConnectClose'``) that reads like a failure. Connections inherited over
  ``fork()`` are not closed but forgotten, for the reason above.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from .errors import HypervisorError
from .libvirt_errors import from_libvirt_error, is_connection_lost

__all__ = ["LibvirtConnection", "close_all", "silence_libvirt_stderr"]

T = TypeVar("T")

_abandoned: list[Any] = []  # connections inherited over fork(); see module docstring
# Every LibvirtConnection of this process, for close_all (weak: a dropped one closes itself).
_instances: weakref.WeakSet[LibvirtConnection] = weakref.WeakSet()
# How long close_all waits for a thread still in a call on a connection.
EXIT_LOCK_WAIT_S = 2.0
_silenced = False
_silence_lock = threading.Lock()


def _ignore_error(_ctx: object, _err: object) -> None:
    """libvirt error callback that drops the error (it is raised as an exception anyway)."""


def silence_libvirt_stderr() -> None:
    """Stop libvirt from printing errors to stderr (process-wide, idempotent)."""
    global _silenced
    with _silence_lock:
        if not _silenced:
            libvirt.registerErrorHandler(_ignore_error, None)
            _silenced = True


class LibvirtConnection:
    """A lazily opened, fork-aware, self-healing connection to one libvirt URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        silence_libvirt_stderr()
        _instances.add(self)

    def _usable(self) -> bool:
        if self._conn is None or self._pid != os.getpid():
            return False
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _drop(self) -> None:
        """Forget the current connection (closing it only if this process opened it)."""
        conn, pid = self._conn, self._pid
        self._conn = None
        self._pid = None
        if conn is None:
            return
        if pid != os.getpid():
            _abandoned.append(conn)
            return
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def get(self) -> libvirt.virConnect:
        """The open connection, opening (or reopening) it if needed."""
        with self._lock:
            if self._usable():
                assert self._conn is not None
                return self._conn
            self._drop()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as err:
                raise from_libvirt_error(
                    err, f"connecting to the hypervisor at {self.uri}"
                ) from err
            if conn is None:  # very old bindings returned None instead of raising
                raise HypervisorError(
                    f"connecting to the hypervisor at {self.uri} failed", permanent=False
                )
            self._conn = conn
            self._pid = os.getpid()
            return conn

    def reset(self) -> None:
        """Close and forget the connection; the next call opens a new one."""
        with self._lock:
            self._drop()

    def call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(conn)``; on a lost connection, reopen and run it once more.

        libvirt errors other than a lost connection propagate unchanged (the caller maps
        them to ``HypervisorError`` with its own context); a second lost connection does too.
        """
        conn = self.get()
        try:
            return fn(conn)
        except libvirt.libvirtError as err:
            if not is_connection_lost(err):
                raise
        self.reset()
        return fn(self.get())


def _forget(conn: Any) -> None:
    """Make an inherited connection's ``__del__`` a no-op without closing it: closing would
    end the parent's session over the socket both processes share."""
    conn._o = None


@atexit.register
def close_all() -> None:
    """Close every connection this process opened and forget those it inherited over
    ``fork()``, before the interpreter tears the libvirt module down (module docstring)."""
    for connection in list(_instances):
        # A thread still in a call keeps its connection (its __del__ may then complain).
        if connection._lock.acquire(timeout=EXIT_LOCK_WAIT_S):
            try:
                connection._drop()
            finally:
                connection._lock.release()
    while _abandoned:
        _forget(_abandoned.pop())
