"""The console page, its SPICE file, and desktop thumbnails."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from vms.selectors import (
    console_watchers,
    desktops_visible_to,
)
from vms.services.consoles import console_mode_default, console_spice_file_issue
from vms.services.errors import ServiceError
from vms.services.thumbnails import thumbnail_path
from vms.web.client import client_ip


@login_required
@require_GET
@ensure_csrf_cookie
def console_page(request: HttpRequest, pk: str) -> HttpResponse:
    """The in-browser console of one desktop (404 unless the user may see it)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    context = {
        "desktop": desktop,
        "is_owner": desktop.owner_id == request.user.pk,
        "mode": console_mode_default(user=request.user, desktop=desktop),
        "watchers": console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)],
    }
    return render(request, "vms/console.html", context)


@login_required
@require_POST
@never_cache
def spice_file(request: HttpRequest, pk: str) -> HttpResponse:
    """Trade a console ticket for a virt-viewer file (SPICE desktops)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    try:
        content = console_spice_file_issue(
            user=request.user,
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
def thumbnail(request: HttpRequest, pk: str) -> HttpResponse:
    """A desktop's latest screenshot, to those who may see the desktop."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    path = thumbnail_path(desktop.pk)
    if desktop.thumbnail_at is None or not path.is_file():
        raise Http404("No screenshot yet.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=10"
    return response
