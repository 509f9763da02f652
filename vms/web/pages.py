"""Pages: health, the employee dashboard and the help-desk search. They read the
database only, never libvirt; live state arrives over /ws/desktops/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from vms.health import health_detail_allowed, health_report
from vms.models import Template
from vms.roles import RequestUser, is_admin, is_helpdesk
from vms.selectors import (
    action_buttons,
    console_watchers,
    desktop_status_label,
    desktops_visible_to,
    helpdesk_search,
    templates_for_user,
)
from vms.services.events import desktop_payload
from vms.services.quotas import Limits, effective_quota, first_exceeded, usage
from vms.web.helpdesk_filters import FILTERS, helpdesk_search_from


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """200 or 503. Staff and the monitoring token get database, Redis, Celery workers and
    libvirt hosts, each ok or an error; everyone else gets `ok` or `unavailable`."""
    report = health_report()
    healthy = all(check["ok"] for check in report.values())
    status = 200 if healthy else 503
    authorization = request.headers.get("Authorization", "")
    if not health_detail_allowed(user=request.user, authorization=authorization):
        word = "ok" if healthy else "unavailable"
        return HttpResponse(word, status=status, content_type="text/plain; charset=utf-8")
    return JsonResponse({"ok": healthy, "checks": report}, status=status)


@login_required
@require_GET
@never_cache
def dashboard(request: HttpRequest) -> HttpResponse:
    """The employee's home: assigned templates, own desktops and the quota meter.

    `?part=state` answers, as JSON, what the page shows live: the quota meters, which
    Launch buttons are refused, and each desktop as the live push sends it. The page asks
    for it when its live feed (re)connects (events sent before then were missed) and when
    a desktop comes, goes or changes state or size.
    """
    if request.GET.get("part") == "state":
        return JsonResponse(_live_state(request.user))
    desktops = list(
        desktops_visible_to(user=request.user)
        .filter(owner=request.user)
        .prefetch_related("interfaces__network")
    )
    watchers = console_watchers(desktop_ids=[d.pk for d in desktops])
    for desktop in desktops:
        desktop.watchers = watchers[str(desktop.pk)]  # type: ignore[attr-defined]
        desktop.buttons = action_buttons(user=request.user, desktop=desktop)  # type: ignore[attr-defined]
        desktop.status_label = desktop_status_label(desktop)  # type: ignore[attr-defined]
    quota, used, templates = _limits(request.user)
    context = {
        "templates": templates,
        "desktops": desktops,
        "meters": _meters(quota, used),
    }
    return render(request, "vms/dashboard.html", context)


def _limits(user: RequestUser) -> tuple[Limits, Limits, list[Template]]:
    """The user's quota, what they use, and their templates, each with `refusal`: why
    one more desktop of it would be refused ("" when it would not)."""
    quota, used = effective_quota(user=user), usage(user=user)  # type: ignore[arg-type]
    templates = list(templates_for_user(user=user))
    for template in templates:
        refusal = first_exceeded(limits=quota, used=used, template=template)
        template.refusal = refusal.message if refusal else ""  # type: ignore[attr-defined]
    return quota, used, templates


# The quota meters in the order shown: (limit field, label, unit).
METERS = (
    ("max_desktops", "Desktops", ""),
    ("max_vcpus", "vCPUs", ""),
    ("max_memory_mib", "Memory", "MiB"),
    ("max_disk_gib", "Disk", "GiB"),
)


def _meters(quota: Limits, used: Limits) -> list[dict[str, object]]:
    return [
        {
            "key": key,
            "label": label,
            "unit": unit,
            "used": getattr(used, key),
            "limit": getattr(quota, key),
        }
        for key, label, unit in METERS
    ]


def _live_state(user: RequestUser) -> dict[str, object]:
    quota, used, templates = _limits(user)
    desktops = desktops_visible_to(user=user).filter(owner=user)
    return {
        "meters": _meters(quota, used),
        "refusals": {str(t.pk): t.refusal for t in templates},  # type: ignore[attr-defined]
        "desktops": [desktop_payload(desktop) for desktop in desktops],
    }


@login_required
@require_GET
def helpdesk(request: HttpRequest) -> HttpResponse:
    """Help-desk: find users by name, narrowed by filters, and reach their desktops
    (view-only by default). One row per desktop, grouped by user."""
    if not is_helpdesk(request.user):
        raise PermissionDenied("This page is for help-desk staff.")
    search = helpdesk_search_from(request.GET)
    results = []
    if search.wanted:
        results = helpdesk_search(
            query=search.query,
            employees_only=search.employees_only,
            with_desktops_only=search.with_desktops_only,
        )
    for _person, desktops in results:
        for desktop in desktops:
            desktop.buttons = action_buttons(user=request.user, desktop=desktop)  # type: ignore[attr-defined]
    context = {"search": search, "results": results, "filters": FILTERS}
    status = 400 if search.errors else 200
    return render(request, "vms/helpdesk.html", context, status=status)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Where a login lands (LOGIN_REDIRECT_URL): help-desk staff on the help desk, everyone
    else on their desktops. "My desktops" stays in the navigation for both."""
    return redirect("helpdesk" if _works_the_help_desk(request.user) else "dashboard")


def _works_the_help_desk(user: RequestUser) -> bool:
    """Help-desk staff who are not admins (admins keep their dashboard and admin link)."""
    return is_helpdesk(user) and not is_admin(user)
