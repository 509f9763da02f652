"""The admin pages: templates (imported from a qcow2 by path or upload), assignments,
quotas, hosts with their allocation and health, every desktop with bulk actions, the
audit log and console sessions.

Desktop state is read-only here: it changes only through the services.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from vms.models import (
    AuditEvent,
    ConsoleSession,
    Desktop,
    DesktopStatus,
    Host,
    Quota,
    Template,
)
from vms.roles import DesktopRole, is_admin
from vms.services.actions import actions_for
from vms.services.desktops import desktop_act
from vms.services.errors import ServiceError
from vms.services.hosts import host_check_uri
from vms.services.images import image_inspect
from vms.services.placement import host_allocations
from vms.services.templates import template_save_imported
from vms.web.client import client_ip


def _admin_site_permission(request: HttpRequest) -> bool:
    """Who may use the admin site: the portal's one definition of an administrator."""
    return bool(request.user.is_active and is_admin(request.user))


admin.site.has_permission = _admin_site_permission  # type: ignore[method-assign]


class HostForm(forms.ModelForm):
    """A host's URI must name a kind of host some backend serves (docs/hypervisors.md)."""

    def clean_uri(self) -> str:
        try:
            return host_check_uri(self.cleaned_data["uri"])
        except ServiceError as exc:
            raise ValidationError(exc.message) from exc


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    form = HostForm
    list_display = [
        "name",
        "uri",
        "enabled",
        "vcpus",
        "memory",
        "disk",
        "virt_type",
        "last_check_ok",
        "last_checked_at",
        "last_check_error",
    ]
    readonly_fields = ["last_checked_at", "last_check_ok", "last_check_error", "virt_type"]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        self._allocations = host_allocations()  # one query for the whole list
        return super().changelist_view(request, extra_context)

    def _used(self, host: Host, field: str) -> int:
        return getattr(self, "_allocations", {}).get(host.pk, {}).get(field, 0)

    @admin.display(description="vCPUs used / capacity")
    def vcpus(self, host: Host) -> str:
        return f"{self._used(host, 'used_vcpus')} / {host.capacity_vcpus}"

    @admin.display(description="Memory MiB used / capacity")
    def memory(self, host: Host) -> str:
        return f"{self._used(host, 'used_memory_mib')} / {host.capacity_memory_mib}"

    @admin.display(description="Disk GiB used / capacity")
    def disk(self, host: Host) -> str:
        return f"{self._used(host, 'used_disk_gib')} / {host.capacity_disk_gib}"


class TemplateImportForm(forms.ModelForm):
    """Create a template by importing a qcow2 image, by server path or upload."""

    image_path = forms.CharField(
        required=False, help_text="Path of a qcow2 file in one of IMAGE_IMPORT_DIRS."
    )
    image_upload = forms.FileField(required=False, help_text="Or upload a qcow2 file.")

    class Meta:
        model = Template
        fields = [
            "name",
            "description",
            "os_label",
            "vcpus",
            "memory_mib",
            "disk_gib",
            "console_type",
            "persistent",
            "enabled",
            "assigned_users",
            "assigned_groups",
        ]

    saved_upload: Path | None = None

    def clean(self) -> dict[str, Any]:
        """Check the image now (the same image_inspect as every import), so errors show
        on the form."""
        data = super().clean() or {}
        if bool(data.get("image_path")) == bool(data.get("image_upload")):
            raise ValidationError("Give either an image path or an upload (one of the two).")
        upload = data.get("image_upload")
        if upload:
            # image_inspect only reads files inside IMAGE_IMPORT_DIRS, so the upload goes there.
            self.saved_upload = _saved_upload(upload)
        path = str(self.saved_upload) if upload else data["image_path"]
        try:
            data["image_file"] = image_inspect(path=path, shown=getattr(upload, "name", "")).path
        except ServiceError as exc:
            raise ValidationError(exc.message) from exc
        return data

    def full_clean(self) -> None:
        super().full_clean()
        if self._errors:  # refused here or by the model's own checks: keep no upload
            self.discard_upload()

    def discard_upload(self) -> None:
        """Remove the saved upload: after a refusal, or once the hosts hold their copy."""
        if self.saved_upload is not None:
            self.saved_upload.unlink(missing_ok=True)
            self.saved_upload = None


def _saved_upload(upload: Any) -> Path:
    folder = Path(settings.IMAGE_IMPORT_DIRS[0]) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{uuid.uuid4().hex}.qcow2"
    with target.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return target


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
        "desktop_count",
    ]
    list_filter = ["enabled", "console_type"]
    filter_horizontal = ["assigned_users", "assigned_groups"]
    search_fields = ["name"]
    actions = ["enable", "disable"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Template]:
        live = ~Q(desktops__status=DesktopStatus.DELETED)
        return super().get_queryset(request).annotate(live_desktops=Count("desktops", filter=live))

    @admin.display(description="Desktops", ordering="live_desktops")
    def desktop_count(self, template: Template) -> int:
        return int(getattr(template, "live_desktops", 0))

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = TemplateImportForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["base_image_path"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Template, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            template_save_imported(template=obj, image_path=form.cleaned_data["image_file"])
        except ServiceError as exc:
            raise PermissionDenied(exc.message) from exc
        finally:
            form.discard_upload()

    @admin.action(description="Enable the selected templates")
    def enable(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable the selected templates")
    def disable(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        queryset.update(enabled=False)


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "max_desktops", "max_vcpus", "max_memory_mib", "max_disk_gib"]
    raw_id_fields = ["user"]  # a lookup, not a list of every user


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


class AppendOnlyAdmin(admin.ModelAdmin):
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
class AuditEventAdmin(AppendOnlyAdmin):
    list_display = ["created_at", "action", "actor", "desktop", "source_ip"]
    list_filter = ["action"]
    search_fields = ["action", "actor__username", "desktop__name"]
    list_select_related = ["actor", "desktop"]
    readonly_fields = ["created_at", "action", "actor", "desktop", "source_ip", "detail"]


@admin.register(ConsoleSession)
class ConsoleSessionAdmin(AppendOnlyAdmin):
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
