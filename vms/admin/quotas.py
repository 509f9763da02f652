"""Quotas of users and groups."""

from __future__ import annotations

from django.contrib import admin

from vms.models import Quota


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "max_desktops", "max_vcpus", "max_memory_mib", "max_disk_gib"]
    raw_id_fields = ["user"]  # a lookup, not a list of every user
