"""Pages: health, dashboard. They read the database only, never libvirt."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from vms.console.services import default_mode, spice_file_issue
from vms.console.tickets import ticket_redeem
from vms.health import health_report
from vms.roles import is_helpdesk
from vms.selectors import (
    console_watchers,
    desktops_visible_to,
    helpdesk_search,
    templates_for_user,
)
from vms.services import desktops
from vms.services.errors import ServiceError
from vms.services.quotas import effective_quota, first_exceeded, usage
from vms.services.thumbnails import thumbnail_path
from vms.web.client import client_ip


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, Redis, Celery workers and libvirt hosts, each ok or an error."""
    report = health_report()
    healthy = all(check["ok"] for check in report.values())
    return JsonResponse({"ok": healthy, "checks": report}, status=200 if healthy else 503)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """The employee's home: assigned templates, own desktops and the quota meter."""
    desktops = list(desktops_visible_to(user=request.user).filter(owner=request.user))
    watchers = console_watchers(desktop_ids=[d.pk for d in desktops])
    for desktop in desktops:
        desktop.watchers = watchers[str(desktop.pk)]  # type: ignore[attr-defined]
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
        "desktop_actions": [
            ("start", "Start"),
            ("stop", "Stop"),
            ("reboot", "Reboot"),
            ("delete", "Delete"),
        ],
    }
    return render(request, "vms/dashboard.html", context)


@login_required
@require_GET
@ensure_csrf_cookie
def console_page(request: HttpRequest, pk: str) -> HttpResponse:
    """The in-browser console of one desktop (404 unless the user may see it)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    context = {
        "desktop": desktop,
        "is_owner": desktop.owner_id == request.user.pk,
        "mode": default_mode(user=request.user, desktop=desktop),
        "watchers": console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)],
    }
    return render(request, "vms/console.html", context)


@login_required
@require_POST
def launch(request: HttpRequest) -> HttpResponse:
    """Launch a desktop from the dashboard (the form twin of POST /api/desktops/)."""
    try:
        template_id = int(request.POST.get("template", ""))
        desktop = desktops.desktop_create(
            user=request.user,
            template_id=template_id,
            name=request.POST.get("name", ""),
            source_ip=client_ip(request),
        )
    except ValueError:
        messages.error(request, "Choose a template to launch.")
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{desktop.name} is being prepared.")
    return redirect("dashboard")


ACTIONS = {
    "start": desktops.desktop_start,
    "stop": desktops.desktop_stop,
    "force-stop": desktops.desktop_force_stop,
    "reboot": desktops.desktop_reboot,
    "delete": desktops.desktop_delete,
}


@login_required
@require_POST
def desktop_action(request: HttpRequest, pk: str, action: str) -> HttpResponse:
    """Power actions and delete from the pages (404 unless the user may see the desktop)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    service = ACTIONS.get(action)
    if service is None:
        raise Http404("No such action.")
    try:
        service(actor=request.user, desktop=desktop, source_ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{desktop.name}: {action.replace('-', ' ')} requested.")
    return redirect(_safe_next(request) or "dashboard")


def _safe_next(request: HttpRequest) -> str | None:
    """The `next` page to return to, if it is one of ours (no open redirect)."""
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None


@login_required
@require_POST
@never_cache
def spice_file(request: HttpRequest, pk: str) -> HttpResponse:
    """Trade a console ticket for a virt-viewer file (SPICE desktops)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    claim = ticket_redeem(ticket=request.POST.get("ticket", ""))
    if claim is None or claim.user_id != request.user.pk or claim.desktop_id != str(desktop.pk):
        messages.error(request, "The console ticket is invalid, used or expired. Try again.")
        return redirect("console", pk=desktop.pk)
    try:
        content = spice_file_issue(claim=claim, source_ip=client_ip(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("console", pk=desktop.pk)
    response = HttpResponse(content, content_type="application/x-virt-viewer")
    response["Content-Disposition"] = 'attachment; filename="desktop.vv"'
    return response


@login_required
@require_GET
def thumbnail(request: HttpRequest, pk: str) -> HttpResponse:
    """A desktop's latest screenshot, to those who may see the desktop."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    path = thumbnail_path(desktop.pk)
    if desktop.thumbnail_at is None or not path.is_file():
        raise Http404("No screenshot yet.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=10"
    return response


@login_required
@require_GET
def helpdesk(request: HttpRequest) -> HttpResponse:
    """Help-desk: find a user by name and reach their desktops (view-only by default)."""
    if not is_helpdesk(request.user):
        raise PermissionDenied("This page is for help-desk staff.")
    query = request.GET.get("q", "").replace("\x00", "").strip()[:100]
    results = helpdesk_search(query=query) if query else []
    context = {
        "query": query,
        "results": results,
        "power_actions": [("start", "Start"), ("stop", "Stop"), ("reboot", "Reboot")],
    }
    return render(request, "vms/helpdesk.html", context)
