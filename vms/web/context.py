"""Template context shared by every page."""

from __future__ import annotations

from django.http import HttpRequest

from vms.roles import is_helpdesk


def roles(request: HttpRequest) -> dict[str, bool]:
    """Which role-specific links the navigation shows."""
    return {"is_helpdesk_user": is_helpdesk(request.user)}
