"""Every desktop, with bulk actions from the action table. Desktop state is read-only here:
it changes only through the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from vms.models import Desktop
from vms.roles import DesktopRole
from vms.services.actions import actions_for
from vms.services.desktops import desktop_act
from vms.services.errors import ServiceError
from vms.web.client import client_ip


@admin.register(Desktop)
class DesktopAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "template", "host", "status", "created_at", "last_used_at"]
    list_filter = ["status", "host", "template"]
    search_fields = ["name", "owner__username", "domain_name"]
    list_select_related = ["owner", "template", "host"]
    readonly_fields = [f.name for f in Desktop._meta.fields]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """Django's actions plus one bulk action per action of the table admins may run."""
        found = super().get_actions(request)
        for entry in actions_for(role=DesktopRole.ADMIN):
            name = f"bulk_{entry.name.replace('-', '_')}"
            description = f"{entry.label} the selected desktops"
            found[name] = (_bulk(entry.name), name, description)
        return found

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting a row would orphan its guest: use the bulk delete action


def _bulk(action: str) -> Any:
    """The admin bulk action that runs `action` on each selected desktop."""

    def run(
        modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Desktop]
    ) -> None:
        done, refused = 0, []
        for desktop in queryset.select_related("host"):
            try:
                desktop_act(
                    actor=request.user, desktop=desktop, action=action, source_ip=client_ip(request)
                )
                done += 1
            except ServiceError as exc:
                refused.append(f"{desktop.name}: {exc.message}")
        modeladmin.message_user(request, f"{done} desktop(s) accepted.", messages.SUCCESS)
        for line in refused:
            modeladmin.message_user(request, line, messages.WARNING)

    return run
