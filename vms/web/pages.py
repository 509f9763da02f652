"""Pages: health, the employee dashboard and the help-desk search. They read the
database only, never libvirt; live state arrives over /ws/desktops/."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from vms.health import health_detail_allowed, health_report
from vms.roles import is_helpdesk
from vms.selectors import (
    action_buttons,
    console_watchers,
    desktops_visible_to,
    helpdesk_search,
    templates_for_user,
)
from vms.services.quotas import effective_quota, first_exceeded, usage


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
def dashboard(request: HttpRequest) -> HttpResponse:
    """The employee's home: assigned templates, own desktops and the quota meter."""
    desktops = list(desktops_visible_to(user=request.user).filter(owner=request.user))
    watchers = console_watchers(desktop_ids=[d.pk for d in desktops])
    for desktop in desktops:
        desktop.watchers = watchers[str(desktop.pk)]  # type: ignore[attr-defined]
        desktop.buttons = action_buttons(user=request.user, desktop=desktop)  # type: ignore[attr-defined]
    quota, used = effective_quota(user=request.user), usage(user=request.user)
    templates = list(templates_for_user(user=request.user))
    for template in templates:
        refusal = first_exceeded(limits=quota, used=used, template=template)
        template.refusal = refusal.message if refusal else ""  # type: ignore[attr-defined]
    context = {
        "templates": templates,
        "desktops": desktops,
        "quota": quota,
        "used": used,
    }
    return render(request, "vms/dashboard.html", context)


@login_required
@require_GET
def helpdesk(request: HttpRequest) -> HttpResponse:
    """Help-desk: find a user by name and reach their desktops (view-only by default)."""
    if not is_helpdesk(request.user):
        raise PermissionDenied("This page is for help-desk staff.")
    query = request.GET.get("q", "").replace("\x00", "").strip()[:100]
    results = helpdesk_search(query=query) if query else []
    for _person, desktops in results:
        for desktop in desktops:
            desktop.buttons = action_buttons(user=request.user, desktop=desktop)  # type: ignore[attr-defined]
    context = {"query": query, "results": results}
    return render(request, "vms/helpdesk.html", context)
