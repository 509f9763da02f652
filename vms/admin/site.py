"""Who may use the admin site, and how it looks."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from vms.roles import is_admin


def _admin_site_permission(request: HttpRequest) -> bool:
    """Who may use the admin site: the portal's one definition of an administrator."""
    return bool(request.user.is_active and is_admin(request.user))


admin.site.has_permission = _admin_site_permission  # type: ignore[method-assign]
admin.site.site_header = "Desktop portal administration"
admin.site.site_title = "Desktop portal admin"
admin.site.index_title = "Administration"
# The app list beside every page took a quarter of a 1280 px screen, and wide tables
# (desktops, hosts) scrolled sideways; the breadcrumbs and the index lead to every list.
admin.site.enable_nav_sidebar = False
