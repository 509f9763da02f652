"""Django admin for every model. Desktop state is read-only here: it changes only
through the services (the API and the portal's pages), never by editing a row."""

from __future__ import annotations

from django.contrib import admin

from vms.models import AuditEvent, Desktop, Host, Quota, Template


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "libvirt_uri",
        "enabled",
        "virt_type",
        "last_check_ok",
        "last_checked_at",
    ]
    readonly_fields = ["last_checked_at", "last_check_ok", "last_check_error", "virt_type"]


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "os_label",
        "vcpus",
        "memory_mib",
        "disk_gib",
        "console_type",
        "enabled",
    ]
    list_filter = ["enabled", "console_type"]
    filter_horizontal = ["assigned_users", "assigned_groups"]
    search_fields = ["name"]


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "max_desktops", "max_vcpus", "max_memory_mib", "max_disk_gib"]


@admin.register(Desktop)
class DesktopAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "template", "host", "status", "created_at"]
    list_filter = ["status", "host", "template"]
    search_fields = ["name", "owner__username", "domain_name"]
    readonly_fields = [f.name for f in Desktop._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "action", "actor", "desktop", "source_ip"]
    list_filter = ["action"]
    readonly_fields = ["created_at", "action", "actor", "desktop", "source_ip", "detail"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
