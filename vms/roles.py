"""Who may do what: the three roles of the portal, from Django groups and flags."""

from __future__ import annotations

from typing import Any

HELPDESK_GROUP = "helpdesk"
EMPLOYEE_GROUP = "employee"

# A request's user: a User or an AnonymousUser (kept loose: no django-stubs here).
AnyUser = Any


def is_admin(user: AnyUser) -> bool:
    """Staff and superusers administer the portal and see every desktop."""
    return bool(user.is_authenticated and (user.is_staff or user.is_superuser))


def is_helpdesk(user: AnyUser) -> bool:
    """Help-desk staff may look at and power-cycle any user's desktop, not delete it."""
    if not user.is_authenticated:
        return False
    return is_admin(user) or user.groups.filter(name=HELPDESK_GROUP).exists()


def sees_all_desktops(user: AnyUser) -> bool:
    """Whether the user may see desktops they do not own."""
    return is_admin(user) or is_helpdesk(user)
