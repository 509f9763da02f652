"""The mapping from libvirt's errors to ``HypervisorError`` (the libvirt backend's half of
``errors.py``, kept apart so that importing the error type does not import libvirt).

Which libvirt failures are worth retrying (the connection or the daemon had a problem) and
which are not (the request itself is wrong, or the disk is full).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import libvirt

from .errors import HypervisorError

__all__ = [
    "POOL_FULL_OR_READONLY_HINTS",
    "RETRY_NOTE",
    "from_libvirt_error",
    "is_connection_lost",
    "is_transient_code",
    "or_none",
    "scrub",
]

# Appended to the message of a transient error: a task will try again.
RETRY_NOTE: Final = " (the hypervisor may be restarting; will retry)"

# Codes that say "the connection or the daemon had a problem", not "your request is wrong".
_TRANSIENT_CODES: Final[frozenset[int]] = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,  # could not connect / connection gone
        libvirt.VIR_ERR_INVALID_CONN,  # connection object already closed
        libvirt.VIR_ERR_SYSTEM_ERROR,  # socket errors (see _PERMANENT_SYSTEM_HINTS)
        libvirt.VIR_ERR_RPC,  # RPC layer failure
        libvirt.VIR_ERR_OPERATION_TIMEOUT,  # e.g. "cannot acquire state change lock"
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        libvirt.VIR_ERR_RESOURCE_BUSY,
    }
)

# libvirt reports errno-based failures as VIR_ERR_SYSTEM_ERROR too; these errnos do not go
# away by retrying, so they are permanent whatever the code says.
_PERMANENT_SYSTEM_HINTS: Final[tuple[str, ...]] = (
    "No space left on device",
    "Disk quota exceeded",
    "Permission denied",
    "Read-only file system",
    "No such file or directory",
    "File exists",
)

# Messages that mean the daemon could not be reached at all (it is stopped or restarting).
# They win over _PERMANENT_SYSTEM_HINTS: a stopped libvirtd removes its socket, so the
# connect fails with "No such file or directory", which is not about our request.
_UNREACHABLE_HINTS: Final[tuple[str, ...]] = (
    "failed to connect socket",
    "is libvirtd running",
)

# Messages (any code) that mean the connection to libvirtd broke under us.
_CONNECTION_LOST_HINTS: Final[tuple[str, ...]] = (
    "connection closed",
    "client socket is closed",
    "end of file while reading data",
    "connection reset by peer",
    "broken pipe",
    "invalid connection pointer",
    "cannot recv data",
    "cannot write data",
    "failed to connect socket",
    "is libvirtd running",
)

# Storage failures that mean "the pool cannot take this volume".
POOL_FULL_OR_READONLY_HINTS: Final[tuple[str, ...]] = (
    "No space left on device",
    "Disk quota exceeded",
    "Permission denied",
    "Read-only file system",
    "Not enough space",
    "not enough space",
)


# tc refusing what libvirt's <bandwidth> needs: the host's kernel lacks the modules.
_SHAPING_MISSING_HINTS: Final[tuple[str, ...]] = (
    "qdisc kind is unknown",
    "failed to load tc action module",
)
SHAPING_MISSING_NOTE: Final = (
    " (the host's kernel cannot apply the template's bandwidth limit: libvirt needs the "
    "sch_htb, sch_sfq and act_police modules; load them, or remove the template's limit)"
)


def _code(err: libvirt.libvirtError) -> int | None:
    code = err.get_error_code()
    return int(code) if code is not None else None


def _text(err: libvirt.libvirtError) -> str:
    msg = err.get_error_message()
    return (str(msg) if msg else str(err)).strip()


def is_transient_code(code: int | None, message: str = "") -> bool:
    """Whether a libvirt error code (plus its message) is worth retrying later."""
    if code is None:
        # No details at all (libvirt's last error was reset before it could be read):
        # nothing says the request was wrong, so let the caller try again.
        return True
    low = message.lower()
    if any(hint in low for hint in _UNREACHABLE_HINTS):
        return True
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and any(
        hint.lower() in low for hint in _PERMANENT_SYSTEM_HINTS
    ):
        return False
    if code in _TRANSIENT_CODES:
        return True
    # An internal error whose text says the socket went away is a lost connection too.
    return any(hint in low for hint in _CONNECTION_LOST_HINTS)


def is_connection_lost(err: libvirt.libvirtError) -> bool:
    """Whether ``err`` means the connection is unusable and should be reopened."""
    code = _code(err)
    low = _text(err).lower()
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN):
        return True
    if code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INTERNAL_ERROR):
        return any(hint in low for hint in _CONNECTION_LOST_HINTS)
    return False


def scrub(text: str, *secrets: str) -> str:
    """Replace every non-empty secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def from_libvirt_error(
    err: libvirt.libvirtError, what: str, *, secrets: tuple[str, ...] = ()
) -> HypervisorError:
    """Turn a libvirt error into a ``HypervisorError``.

    ``what`` says what we were doing, in words a person understands, for example
    ``"starting desktop 'desk-42'"``; libvirt's own text follows it. ``secrets`` are scrubbed
    from the result (libvirt sometimes echoes XML it was given).
    """
    text = scrub(_text(err), *secrets)
    transient = is_transient_code(_code(err), text)
    suffix = RETRY_NOTE if transient else ""
    if any(hint in text.lower() for hint in _SHAPING_MISSING_HINTS):
        suffix = SHAPING_MISSING_NOTE
    return HypervisorError(f"{what} failed: {text}{suffix}", permanent=not transient)


L = TypeVar("L")


def or_none(lookup: Callable[[], L], missing: int) -> L | None:
    """``lookup()``, or None when libvirt answers with the ``missing`` error code."""
    try:
        return lookup()
    except libvirt.libvirtError as err:
        if _code(err) == missing:
            return None
        raise
