"""Form actions from the pages: launch, power actions and delete (through the services)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from vms.selectors import (
    desktops_visible_to,
)
from vms.services import desktops
from vms.services.errors import ServiceError
from vms.web.client import client_ip


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
