"""Quotas of users and groups: each applies to exactly one user or one group."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import NON_FIELD_ERRORS

from vms.models import Quota

BOTH = "Choose a user or a group, not both."
NEITHER = "Choose who this quota applies to: a user or a group."
WHOM_ERROR = "quota_whom"


class QuotaForm(forms.ModelForm[Quota]):
    """Says the one-of-the-two rule in words, instead of the database constraint's name."""

    class Meta:
        model = Quota
        fields = ["user", "group", "max_desktops", "max_vcpus", "max_memory_mib", "max_disk_gib"]
        help_texts = {
            "user": "The person this quota applies to (their own quota wins over their groups').",
            "group": "Or a group: each member gets, limit by limit, the most generous of "
            "their groups' quotas.",
        }

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        user, group = data.get("user"), data.get("group")
        if user and group:
            self.add_error(None, forms.ValidationError(BOTH, code=WHOM_ERROR))
        elif not user and not group and not self.has_error("user") and not self.has_error("group"):
            self.add_error(None, forms.ValidationError(NEITHER, code=WHOM_ERROR))
        return data

    def _get_validation_exclusions(self) -> set[str]:
        # Once clean() has said what is wrong with user/group, leave them out of the
        # model's checks: its CheckConstraint would add "Constraint ... is violated".
        # Django's private hook (django-stubs leaves it out).
        exclude: set[str] = super()._get_validation_exclusions()  # type: ignore[misc]
        if self.has_error(NON_FIELD_ERRORS, code=WHOM_ERROR):
            exclude |= {"user", "group"}
        return exclude


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin[Quota]):
    form = QuotaForm
    list_display = [
        "applies_to",
        "max_desktops",
        "max_vcpus",
        "max_memory_mib",
        "max_disk_gib",
    ]
    list_display_links = ["applies_to"]
    list_select_related = ["user", "group"]
    search_fields = ["user__username", "group__name"]
    # Picked by typing a name (the User and Group admins' search_fields), not from a list
    # of every user or a raw id.
    autocomplete_fields = ["user", "group"]

    @admin.display(description="Applies to", ordering="user__username")
    def applies_to(self, quota: Quota) -> str:
        if quota.user_id is not None:
            return f"User {quota.user}"
        return f"Group {quota.group}"
