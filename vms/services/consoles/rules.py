"""Who may open which console, in which mode (docs/architecture.md, section 4).

The owner may open their desktop in full or view mode; help-desk staff and admins get
view-only by default, and full control of someone else's desktop only with a stated
reason. The desktop must be running, and each user has a cap on open sessions.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied

from vms.models import ConsoleMode, ConsoleType, Desktop, DesktopStatus
from vms.selectors import console_sessions_open
from vms.services.consoles.errors import ConsoleRefused, TooManyConsoles
from vms.services.core.errors import InvalidTransition


def console_mode_check(*, user: User, desktop: Desktop, mode: str, reason: str) -> None:
    """Raise unless `user` may open `desktop` in `mode` (visibility is checked by the caller)."""
    if mode not in ConsoleMode.values:
        raise ConsoleRefused("The mode must be 'full' or 'view'.")
    if desktop.owner_id != user.pk and mode == ConsoleMode.FULL and not reason.strip():
        raise PermissionDenied("Taking control of another user's desktop needs a reason.")


def console_mode_default(*, user: User, desktop: Desktop) -> str:
    """Owners get full control; help-desk and admins look (view-only) unless they ask."""
    return "full" if desktop.owner_id == user.pk else "view"


def console_running_check(*, desktop: Desktop) -> None:
    """Raise unless the desktop runs (a console of anything else shows nothing)."""
    if desktop.status != DesktopStatus.RUNNING:
        raise InvalidTransition(f"The desktop is {desktop.status}; start it to open its console.")


def console_cap_check(*, user: User) -> None:
    """Raise when the user is at their cap of open console sessions."""
    open_sessions = console_sessions_open().filter(user_id=user.pk).count()
    if open_sessions >= settings.CONSOLE_MAX_SESSIONS_PER_USER:
        raise TooManyConsoles(
            f"You already have {open_sessions} consoles open; close one to open another."
        )


def console_socket_path(desktop: Desktop) -> str:
    """The relay path of the desktop's console: SPICE channels or an RFB stream."""
    kind = "spice" if desktop.template.console_type == ConsoleType.SPICE else "console"
    return f"/ws/{kind}/{desktop.pk}/"
