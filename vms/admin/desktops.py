"""Every desktop, with its actions from the action table (per desktop and in bulk).

Desktop state is read-only here: it changes only through the services (`desktop_act`),
so a desktop's page is a view page with action buttons, not a form.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from vms.models import Desktop, DesktopStatus
from vms.roles import DesktopRole, signed_in
from vms.services.core.errors import ServiceError
from vms.services.desktops.actions import DesktopAction, actions_for, actions_valid_in, state_said
from vms.services.desktops.requests import desktop_act
from vms.web.client import client_ip

S = DesktopStatus
# The changelist being rendered (with its filters), where its row buttons come back to;
# per request, not on the ModelAdmin, which every request shares.
_changelist_url: ContextVar[str] = ContextVar("desktop_changelist_url", default="")


class StatusFilter(admin.SimpleListFilter):
    """By status; deleted desktops are left out unless asked for (they are history)."""

    title = "status"
    parameter_name = "status"
    EVERY = "every"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        states = [(status.value, str(status.label)) for status in S]
        return [*states, (self.EVERY, "All, deleted included")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Desktop]) -> QuerySet[Desktop]:
        value = self.value()
        if value is None:
            return queryset.exclude(status=S.DELETED)
        if value == self.EVERY:
            return queryset
        return queryset.filter(status=value)

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "All but deleted",
        }
        for value, label in self.lookup_choices:
            yield {
                "selected": self.value() == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }


def needs_confirmation(entry: DesktopAction) -> bool:
    """Actions that may interrupt someone working in a running desktop ask first in bulk."""
    return S.RUNNING in entry.sources


@dataclass(frozen=True)
class PanelButton:
    """One action button on a desktop's admin page (only those its state allows now)."""

    label: str
    url: str
    confirm: str
    danger: bool


@admin.register(Desktop)
class DesktopAdmin(admin.ModelAdmin[Desktop]):
    # The columns an admin scans first, then the rest; fits 1280 px beside the filters.
    list_display = [
        "name",
        "owner",
        "status_label",
        "host",
        "row_actions",
        "template",
        "created_at",
    ]
    list_filter = [StatusFilter, "host", "template"]
    search_fields = ["name", "owner__username", "domain_name"]
    list_select_related = ["owner", "template", "host"]
    readonly_fields = [f.name for f in Desktop._meta.fields]
    fieldsets = [
        (
            None,
            {"fields": ["name", "owner", "template", "host", "status", "progress", "last_error"]},
        ),
        ("Size", {"fields": ["vcpus", "memory_mib", "disk_gib"]}),
        ("On the hypervisor", {"fields": ["id", "domain_name", "domain_uuid", "volume_name"]}),
        (
            "Times",
            {
                "fields": [
                    "created_at",
                    "status_changed_at",
                    "last_used_at",
                    "thumbnail_at",
                    "deleted_at",
                ]
            },
        ),
    ]

    @admin.display(description="Status", ordering="status")
    def status_label(self, desktop: Desktop) -> str:
        return format_html(
            '<span class="desktop-status status-{}">{}</span>',
            desktop.status,
            desktop.get_status_display(),
        )

    @admin.display(description="Actions")
    def row_actions(self, desktop: Desktop) -> str:
        """Buttons for this desktop's row. They sit inside the changelist's form, so each
        posts that form (its CSRF token) to the page's action URL with `formaction`; the
        ones that destroy something (a confirm text) are only on the desktop's own page."""
        valid = set(actions_valid_in(desktop.status, progress=desktop.progress))
        here = _changelist_url.get() or reverse("admin:vms_desktop_changelist")
        buttons = format_html_join(
            "",
            '<button type="submit" class="button row-action" formaction="{}" name="next" '
            'value="{}" data-action="{}">{}</button>',
            (
                (_action_url(desktop, entry.name), here, entry.name, entry.label)
                for entry in actions_for(role=DesktopRole.ADMIN, on_pages=True)
                if entry.name in valid and not entry.confirm
            ),
        )
        if desktop.status == S.RUNNING:
            console = format_html(
                '<a class="row-action" href="{}">Console</a>', reverse("console", args=[desktop.pk])
            )
            return format_html("{}{}", buttons, console)
        return buttons

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        token = _changelist_url.set(request.get_full_path())
        try:
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()  # the rows are drawn now, while the URL is set
            return response
        finally:
            _changelist_url.reset(token)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        desktop = self.get_object(request, object_id)
        if desktop is not None:
            extra_context = {**(extra_context or {}), **_panel(request, desktop)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """Django's actions plus one bulk action per action of the table admins may run."""
        found = super().get_actions(request)
        for entry in actions_for(role=DesktopRole.ADMIN):
            name = f"bulk_{entry.name.replace('-', '_')}"
            description = f"{entry.label} the selected desktops"
            found[name] = (_bulk(entry), name, description)
        # django-stubs types an action as returning str; Django takes any response.
        found["publish_version"] = (  # type: ignore[assignment]
            _publish_version,
            "publish_version",
            "Publish the selected (stopped) desktop as its template's new version",
        )
        return found

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a view page: every change is an action (buttons), through the services

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting a row would orphan its guest: use the Delete action


def _action_url(desktop: Desktop, action: str) -> str:
    return reverse("desktop-action", kwargs={"pk": desktop.pk, "action": action})


def _panel(request: HttpRequest, desktop: Desktop) -> dict[str, Any]:
    """What the desktop's page shows above its fields: screen, console, action buttons."""
    valid = set(actions_valid_in(desktop.status, progress=desktop.progress))
    buttons = [
        PanelButton(
            label=entry.label,
            url=_action_url(desktop, entry.name),
            confirm=entry.confirm.format(name=desktop.name),
            danger=entry.danger,
        )
        for entry in actions_for(role=DesktopRole.ADMIN)
        if entry.name in valid
    ]
    thumbnail = ""  # a stopped desktop's last screen is history, not its screen
    if desktop.thumbnail_at is not None and desktop.status == S.RUNNING:
        stamp = int(desktop.thumbnail_at.timestamp())
        thumbnail = f"{reverse('thumbnail', args=[desktop.pk])}?at={stamp}"
    console = reverse("console", args=[desktop.pk]) if desktop.status == S.RUNNING else ""
    return {
        "desktop_buttons": buttons,
        "desktop_thumbnail_url": thumbnail,
        "desktop_console_url": console,
        "desktop_next": request.get_full_path(),
    }


def _bulk(entry: DesktopAction) -> Any:
    """The admin bulk action that runs `entry` on each selected desktop; those that may
    interrupt someone's work show a confirmation page first (like Django's bulk delete)."""

    def run(
        modeladmin: admin.ModelAdmin[Desktop], request: HttpRequest, queryset: QuerySet[Desktop]
    ) -> HttpResponse | None:
        if needs_confirmation(entry) and request.POST.get("post") != "yes":
            return _confirmation(modeladmin, request, queryset, entry)
        _run_on_each(modeladmin, request, queryset, entry)
        return None

    return run


def _run_on_each(
    modeladmin: admin.ModelAdmin[Desktop],
    request: HttpRequest,
    queryset: QuerySet[Desktop],
    entry: DesktopAction,
) -> None:
    done, refused = 0, []
    for desktop in queryset.select_related("host"):
        try:
            desktop_act(
                actor=signed_in(request.user),
                desktop=desktop,
                action=entry.name,
                source_ip=client_ip(request),
            )
            done += 1
        except ServiceError as exc:
            refused.append(f"{entry.label} skipped for {desktop.name}: {exc.message}")
    if done:
        what = f"{entry.label} requested for {done} desktop{'s' if done != 1 else ''}."
        modeladmin.message_user(request, what, messages.SUCCESS)
    for line in refused:
        modeladmin.message_user(request, line, messages.WARNING)


def _confirmation(
    modeladmin: admin.ModelAdmin[Desktop],
    request: HttpRequest,
    queryset: QuerySet[Desktop],
    entry: DesktopAction,
) -> TemplateResponse:
    desktops = list(queryset.select_related("owner", "host"))
    rows = [
        (
            desktop,
            entry.name in actions_valid_in(desktop.status, progress=desktop.progress),
            state_said(desktop),  # "restoring" while a restore runs, else its state
        )
        for desktop in desktops
    ]
    acted_on = sum(1 for _, allowed, _ in rows if allowed)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"{entry.label} {len(desktops)} desktop{'s' if len(desktops) != 1 else ''}?",
        "opts": modeladmin.model._meta,
        "entry": entry,
        "action_name": f"bulk_{entry.name.replace('-', '_')}",
        "rows": rows,
        "acted_on": acted_on,
        "deletes": entry.moves_to == S.DELETING,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/vms/desktop/bulk_action_confirmation.html", context)


def _publish_version(
    modeladmin: admin.ModelAdmin[Desktop], request: HttpRequest, queryset: QuerySet[Desktop]
) -> HttpResponse | None:
    """Flatten one prepared, stopped desktop's disk into a new version of its template
    (a Celery task; the template's page lists the versions and their state). Asked first
    on a page that names the desktop's owner, whose username the admin types to confirm:
    their disk becomes everyone's base."""
    from vms.services.catalog.versions import template_version_publish

    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one desktop.", level=messages.ERROR)
        return None
    desktop = queryset.select_related("owner", "template").get()
    if request.POST.get("post") != "yes":
        return _publish_confirmation(modeladmin, request, desktop)
    try:
        version = template_version_publish(
            actor=signed_in(request.user),
            desktop=desktop,
            confirm_owner=request.POST.get("confirm_owner", ""),
            note=request.POST.get("note", ""),
            source_ip=client_ip(request),
        )
    except ServiceError as exc:
        return _publish_confirmation(modeladmin, request, desktop, error=exc.message)
    modeladmin.message_user(
        request,
        f"Building {version} from {desktop.name} of {version.made_from_owner_name}; "
        "new launches use it once ready.",
    )
    return None


def _publish_confirmation(
    modeladmin: admin.ModelAdmin[Desktop],
    request: HttpRequest,
    desktop: Desktop,
    *,
    error: str = "",
) -> TemplateResponse:
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Publish {desktop.name} as everyone's {desktop.template.name}?",
        "opts": modeladmin.model._meta,
        "desktop": desktop,
        "error": error,
        "note": request.POST.get("note", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/vms/desktop/publish_confirmation.html", context)
