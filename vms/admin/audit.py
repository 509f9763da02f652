"""The audit trail (audit events, console sessions): readable, never changed here."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from vms.models import AuditEvent, ConsoleSession

M = TypeVar("M", bound=Model)


class AppendOnlyAdmin(admin.ModelAdmin[M]):
    """The audit trail is read-only here, for superusers too: no add, change or delete, and
    no actions (the bulk delete included). Old rows go only by AUDIT_RETENTION_DAYS."""

    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(AppendOnlyAdmin[AuditEvent]):
    list_display = ["created_at", "action", "actor", "desktop", "source_ip"]
    list_filter = ["action"]
    search_fields = ["action", "actor__username", "desktop__name"]
    list_select_related = ["actor", "desktop"]
    readonly_fields = ["created_at", "action", "actor", "desktop", "source_ip", "detail"]


@admin.register(ConsoleSession)
class ConsoleSessionAdmin(AppendOnlyAdmin[ConsoleSession]):
    """Console sessions: the part of the audit trail people ask about most."""

    list_display = [
        "started_at",
        "user",
        "desktop",
        "mode",
        "reason",
        "relay",
        "source_ip",
        "ended_at",
        "bytes_to_guest",
        "bytes_from_guest",
        "dropped_messages",
    ]
    list_filter = ["mode", "relay"]
    search_fields = ["user__username", "desktop__name", "reason"]
    list_select_related = ["user", "desktop"]
    readonly_fields = [f.name for f in ConsoleSession._meta.fields]
