"""Templates: created by importing a qcow2 image (by server path or upload), then assigned."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest

from vms.models import DesktopStatus, Template, TemplateNetwork, TemplateVersion
from vms.roles import signed_in
from vms.services.catalog.images import image_inspect
from vms.services.catalog.templates import template_save_imported
from vms.services.catalog.versions import base_in_use, template_version_cancel
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import ServiceError


class TemplateImportForm(forms.ModelForm[Template]):
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
            "bandwidth_kb_s",
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
        if self.errors:  # refused here or by the model's own checks: keep no upload
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


class TemplateNetworkInline(admin.TabularInline[TemplateNetwork, Template]):
    """The template's networks: its desktops get one virtio NIC each, in this order."""

    model = TemplateNetwork
    extra = 0
    fields = ["position", "network"]
    verbose_name = "network"
    verbose_name_plural = "Networks (one NIC each, in order; from the next launch on)"


VERSION_FIELDS = ("number", "state", "made_from", "source_owner", "created_by", "created_at",
                  "note", "in_use")  # fmt: skip


class TemplateVersionInline(admin.TabularInline[TemplateVersion, Template]):
    """The template's base versions, newest first (read-only: a new one is published from
    a prepared desktop, with the desktops list's "Publish" action)."""

    model = TemplateVersion
    extra = 0
    fields = VERSION_FIELDS
    readonly_fields = VERSION_FIELDS
    can_delete = False

    @admin.display(description="Status")
    def state(self, version: TemplateVersion) -> str:
        """A build under way shows how far its copy is (the page shows it when loaded)."""
        if version.status == "building":
            return f"building, {version.progress}% copied"
        if version.status == "failed":
            return f"failed: {version.last_error}"
        return version.status

    @admin.display(description="Owner of the source desktop")
    def source_owner(self, version: TemplateVersion) -> str:
        """Whose desktop it was (recorded at publish; the imported image has none)."""
        if not version.made_from_owner_name:
            return ""
        return f"{version.made_from_owner_name} ({version.made_from_name})"

    @admin.display(description="Base still in use", boolean=True)
    def in_use(self, version: TemplateVersion) -> bool:
        return bool(version.base_image_path) and base_in_use(path=version.base_image_path)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin[Template]):
    inlines = [TemplateNetworkInline, TemplateVersionInline]
    list_display = [
        "name",
        "os_label",
        "vcpus",
        "memory_mib",
        "disk_gib",
        "console_type",
        "network_list",
        "bandwidth",
        "enabled",
        "desktop_count",
    ]
    list_filter = ["enabled", "console_type"]
    filter_horizontal = ["assigned_users", "assigned_groups"]
    search_fields = ["name"]
    actions = ["enable", "disable", "cancel_version"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Template]:
        live = ~Q(desktops__status=DesktopStatus.DELETED)
        return (
            super()
            .get_queryset(request)
            .annotate(live_desktops=Count("desktops", filter=live))
            .prefetch_related("templatenetwork_set__network")
        )

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        if formset.model is TemplateNetwork and formset.has_changed():
            template = form.instance
            names = [link.network.name for link in template.templatenetwork_set.all()]
            audit_record(action=AuditVerb.TEMPLATE_NETWORKS, actor=request.user,
                         template=template.name, networks=names)  # fmt: skip

    @admin.display(description="Networks")
    def network_list(self, template: Template) -> str:
        names = [link.network.name for link in template.templatenetwork_set.all()]
        return ", ".join(names) or "none"

    @admin.display(description="Bandwidth", ordering="bandwidth_kb_s")
    def bandwidth(self, template: Template) -> str:
        if template.bandwidth_kb_s is None:
            return "unlimited"
        return f"{template.bandwidth_kb_s} kB/s each way"

    @admin.display(description="Desktops", ordering="live_desktops")
    def desktop_count(self, template: Template) -> int:
        return int(getattr(template, "live_desktops", 0))

    def get_form(
        self, request: HttpRequest, obj: Template | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm[Template]]:
        if obj is None:
            kwargs["form"] = TemplateImportForm
        return super().get_form(request, obj, change, **kwargs)

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

    @admin.action(description="Cancel the version being built of the selected templates")
    def cancel_version(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        building = TemplateVersion.objects.filter(template__in=queryset, status="building")
        for version in building.select_related("template"):
            template_version_cancel(actor=signed_in(request.user), version=version)
            self.message_user(request, f"Cancelled {version}; its copy is removed.")

    @admin.action(description="Enable the selected templates")
    def enable(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable the selected templates")
    def disable(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        queryset.update(enabled=False)
