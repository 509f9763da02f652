"""Errors the services raise; the API and pages turn each into a clear answer."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `message` is shown to the user as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QuotaExceeded(ServiceError):
    """The launch would take the user past one of their limits (`limit` names it)."""

    def __init__(self, *, limit: str, allowed: int, requested: int) -> None:
        super().__init__(f"Quota exceeded: {limit} would be {requested}, the limit is {allowed}.")
        self.limit = limit


class NotAssigned(ServiceError):
    """The template is not assigned to the user (or is disabled)."""


class InvalidTransition(ServiceError):
    """The desktop's current state does not allow the requested action."""


class NoHostAvailable(ServiceError):
    """No enabled host has room for the desktop."""


class ServiceUnavailable(ServiceError):
    """A backing service (the task broker) is down; nothing was changed."""


class InvalidName(ServiceError):
    """A desktop name that cannot be stored (too long, control characters, empty)."""


class HostCannotTake(ServiceError):
    """The host asked for cannot take the desktop (full, down, disabled or the same)."""


class NetworkInvalid(ServiceError):
    """A network (or a template's networks) that cannot be saved as given."""


class NetworkInUse(ServiceError):
    """The network is used by a template or a desktop, so it cannot be deleted or reshaped."""
