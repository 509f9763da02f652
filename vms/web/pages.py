"""Pages: health, the employee dashboard and the help-desk search. They read the
database only, never libvirt; live state arrives over /ws/desktops/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from vms.health import health_detail_allowed, health_report, healthy_cached, report_healthy
from vms.models import Template
from vms.roles import RequestUser, is_admin, is_helpdesk, signed_in
from vms.selectors import (
    action_buttons,
    console_watchers,
    desktop_status_label,
    desktops_visible_to,
    helpdesk_search,
    snapshots_revertable,
    templates_for_user,
)
from vms.services.desktops.actions import exclusive_under_way
from vms.services.desktops.events import desktop_payload
from vms.services.desktops.progress import LaunchStep, launch_progress
from vms.services.desktops.quotas import Limits, effective_quota, first_exceeded, usage
from vms.web.helpdesk_filters import FILTERS, helpdesk_search_from


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """200 or 503. Staff and the monitoring token get database, Redis, Celery workers and
    libvirt hosts, each ok or an error, checked now; everyone else gets `ok` or
    `unavailable` from a verdict at most HEALTHZ_CACHE_S old (vms.health), which costs them
    no query and no broadcast."""
    authorization = request.headers.get("Authorization", "")
    if not health_detail_allowed(user=request.user, authorization=authorization):
        healthy = healthy_cached()
        word = "ok" if healthy else "unavailable"
        status = 200 if healthy else 503
        return HttpResponse(word, status=status, content_type="text/plain; charset=utf-8")
    report = health_report()
    healthy = report_healthy(report)
    return JsonResponse({"ok": healthy, "checks": report}, status=200 if healthy else 503)


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
    user = signed_in(request.user)
    if request.GET.get("part") == "state":
        return JsonResponse(_live_state(user))
    desktops = list(
        desktops_visible_to(user=user).filter(owner=user).prefetch_related("interfaces__network")
    )
    watchers = console_watchers(desktop_ids=[d.pk for d in desktops])
    for desktop in desktops:
        desktop.watchers = watchers[str(desktop.pk)]  # type: ignore[attr-defined]
        desktop.buttons = action_buttons(user=user, desktop=desktop)  # type: ignore[attr-defined]
        desktop.status_label = desktop_status_label(desktop)  # type: ignore[attr-defined]
        desktop.launch = launch_progress(desktop)  # type: ignore[attr-defined]
        # While a restore replaces its disk, its panel is open and offers nothing else.
        locked = exclusive_under_way(desktop.progress) is not None
        desktop.disks_locked = locked  # type: ignore[attr-defined]
        opened = locked or desktop.progress == LaunchStep.RESTORING
        desktop.disks_open = opened  # type: ignore[attr-defined]
    quota, used, templates = _limits(user)
    context = {
        "templates": templates,
        "desktops": desktops,
        "meters": _meters(quota, used),
    }
    return render(request, "vms/dashboard.html", context)


def _limits(user: User) -> tuple[Limits, Limits, list[Template]]:
    """The user's quota, what they use, and their templates, each with `refusal`: why
    one more desktop of it would be refused ("" when it would not)."""
    quota, used = effective_quota(user=user), usage(user=user)
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


def _live_state(user: User) -> dict[str, object]:
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
    revertable = snapshots_revertable(desktop_ids=[d.pk for _p, ds in results for d in ds])
    for _person, desktops in results:
        for desktop in desktops:
            desktop.buttons = action_buttons(user=request.user, desktop=desktop)  # type: ignore[attr-defined]
            desktop.revertable = revertable[desktop.pk]  # type: ignore[attr-defined]
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
