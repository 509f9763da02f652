"""Template context shared by every page."""

from __future__ import annotations

from django.http import HttpRequest

from vms.roles import is_admin, is_helpdesk


def roles(request: HttpRequest) -> dict[str, bool]:
    """Which role-specific links the navigation shows (the same rules as everywhere)."""
    return {"is_helpdesk_user": is_helpdesk(request.user), "is_admin_user": is_admin(request.user)}
