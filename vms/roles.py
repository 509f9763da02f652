"""Who may do what: the three roles of the portal, from Django groups and flags."""

from __future__ import annotations

import enum

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied

HELPDESK_GROUP = "helpdesk"
EMPLOYEE_GROUP = "employee"

# Who makes a request: the portal keeps Django's own User model (AUTH_USER_MODEL is not
# swapped), or nobody yet.
RequestUser = User | AnonymousUser


def signed_in(user: RequestUser) -> User:
    """The user of a view that requires a login, as the services take it. The login guard
    runs first; should a view ever lack it, the anonymous visitor is refused here rather
    than acting as nobody."""
    if not isinstance(user, User):
        raise PermissionDenied
    return user


def is_admin(user: RequestUser) -> bool:
    """Staff and superusers administer the portal and see every desktop."""
    return bool(user.is_authenticated and (user.is_staff or user.is_superuser))


def is_helpdesk(user: RequestUser) -> bool:
    """Help-desk staff may look at and power-cycle any user's desktop, not delete it."""
    if not user.is_authenticated:
        return False
    return is_admin(user) or user.groups.filter(name=HELPDESK_GROUP).exists()


def sees_all_desktops(user: RequestUser) -> bool:
    """Whether the user may see desktops they do not own."""
    return is_admin(user) or is_helpdesk(user)


class DesktopRole(enum.Enum):
    """In which role someone acts on a desktop they can see."""

    OWNER = "owner"
    HELPDESK = "helpdesk"
    ADMIN = "admin"


def desktop_role(user: RequestUser, *, owner_id: int) -> DesktopRole:
    """The strongest role `user` has on a desktop of `owner_id` (visibility is checked
    elsewhere: an employee never reaches another user's desktop)."""
    if is_admin(user):
        return DesktopRole.ADMIN
    if user.pk == owner_id:
        return DesktopRole.OWNER
    return DesktopRole.HELPDESK
