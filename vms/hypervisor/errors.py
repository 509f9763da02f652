"""The one exception type the hypervisor layer raises.

Callers (Celery tasks, the reconcile loop) only need to know two things about a failure:
what to tell a person, and whether trying again later can help. ``HypervisorError`` carries
exactly that. ``permanent=False`` means "the hypervisor could not be reached or was busy,
retry"; ``permanent=True`` means "retrying the same call will fail the same way".

This module imports no hypervisor library: services, tasks and pages can catch the error
without loading libvirt. Each backend maps its library's errors onto it (the libvirt
backend's mapping is ``libvirt_errors.py``).
"""

from __future__ import annotations

__all__ = ["HypervisorError"]


class HypervisorError(Exception):
    """A hypervisor operation failed.

    ``message`` is meant for a person (an admin reading a desktop's error state), so it names
    the object involved and what to do about it. It never contains a password.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"HypervisorError({self.message!r}, permanent={self.permanent})"
