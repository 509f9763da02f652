"""Hypervisor hosts: registration (the URI must name a served kind of host) and allocation."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from vms.models import Host
from vms.services.errors import ServiceError
from vms.services.hosts import host_check_uri
from vms.services.placement import host_allocations


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
