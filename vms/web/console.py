"""The console page, its SPICE file, and desktop thumbnails."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from vms.roles import signed_in
from vms.selectors import (
    action_buttons,
    console_watchers,
    desktops_visible_to,
)
from vms.services.consoles import console_mode_default, console_spice_file_issue
from vms.services.core.errors import ServiceError
from vms.services.desktops.actions import ACTIONS
from vms.services.desktops.events import desktop_payload
from vms.services.desktops.thumbnails import thumbnail_path
from vms.web.client import client_ip


@login_required
@require_GET
@ensure_csrf_cookie
def console_page(request: HttpRequest, pk: str) -> HttpResponse:
    """The in-browser console of one desktop (404 unless the user may see it)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    # A stopped desktop's console offers to start it, and nothing else: the other actions
    # live on the dashboard, away from the screen a person is working in.
    offered = {action.name for action in ACTIONS.values() if action.on_console_page}
    desktop.buttons = [  # type: ignore[attr-defined]
        button
        for button in action_buttons(user=request.user, desktop=desktop)
        if button.name in offered
    ]
    context = {
        "desktop": desktop,
        "state": desktop_payload(desktop),
        "is_owner": desktop.owner_id == request.user.pk,
        "mode": console_mode_default(user=signed_in(request.user), desktop=desktop),
        "watchers": console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)],
    }
    return render(request, "vms/console.html", context)


@login_required
@require_GET
@never_cache
def console_state(request: HttpRequest, pk: str) -> JsonResponse:
    """The desktop's state as the live feed sends it (404 unless the user may see it).

    The console page reads it once its live feed is open, so a change that happened between
    rendering the page and subscribing (a start finishing quickly) is not missed.
    """
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    return JsonResponse(desktop_payload(desktop))


@login_required
@require_POST
@never_cache
def spice_file(request: HttpRequest, pk: str) -> HttpResponse:
    """Trade a console ticket for a virt-viewer file (SPICE desktops)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    try:
        content = console_spice_file_issue(
            user=signed_in(request.user),
            desktop=desktop,
            ticket=request.POST.get("ticket", ""),
            source_ip=client_ip(request),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("console", pk=desktop.pk)
    response = HttpResponse(content, content_type="application/x-virt-viewer")
    response["Content-Disposition"] = 'attachment; filename="desktop.vv"'
    return response


@login_required
@require_GET
def thumbnail(request: HttpRequest, pk: str) -> FileResponse:
    """A desktop's latest screenshot, to those who may see the desktop."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    path = thumbnail_path(desktop.pk)
    if desktop.thumbnail_at is None or not path.is_file():
        raise Http404("No screenshot yet.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=10"
    return response
