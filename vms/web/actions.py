"""Form actions from the pages: launch, rename, the desktop actions and ending a help-desk
console session (all through the services)."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from vms.models import Desktop
from vms.roles import signed_in
from vms.selectors import console_sessions_endable_by, desktops_visible_to
from vms.services.consoles import console_session_end
from vms.services.core.errors import ServiceError
from vms.services.desktops.actions import action_get
from vms.services.desktops.requests import desktop_act, desktop_create, desktop_rename
from vms.services.disks.snapshots import snapshot_revert
from vms.web.client import client_ip


@login_required
@require_POST
def launch(request: HttpRequest) -> HttpResponse:
    """Launch a desktop from the dashboard (the form twin of POST /api/desktops/)."""
    try:
        template_id = int(request.POST.get("template", ""))
        desktop = desktop_create(
            user=signed_in(request.user),
            template_id=template_id,
            name=request.POST.get("name", ""),
            source_ip=client_ip(request),
        )
    except ValueError:
        messages.error(request, "Choose a template to launch.")
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        # Tagged with the desktop's id: the dashboard turns it into "… is running" live.
        messages.success(request, f"{desktop.name} is being prepared.", extra_tags=str(desktop.pk))
    return redirect("dashboard")


@login_required
@require_POST
def desktop_action(request: HttpRequest, pk: str, action: str) -> HttpResponse:
    """Any action of the table from the pages (404 unless the user may see the desktop)."""
    desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
    if action == RENAME:
        return _rename(request, desktop)
    if action == REVERT:
        return _revert(request, desktop)
    entry = action_get(action)
    if entry is None or not entry.offered:
        raise Http404("No such action.")
    try:
        desktop_act(
            actor=signed_in(request.user),
            desktop=desktop,
            action=action,
            source_ip=client_ip(request),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{desktop.name}: {entry.label.lower()} requested.")
    return redirect(_safe_next(request) or "dashboard")


# A snapshot revert from the help-desk page, with its reason (POST .../snapshots/{sid}/revert/
# in the API); like rename it shares the route, which no action of the table names so.
REVERT = "revert-snapshot"


def _revert(request: HttpRequest, desktop: Desktop) -> HttpResponse:
    try:
        snapshot = snapshot_revert(
            actor=signed_in(request.user),
            desktop=desktop,
            snapshot_id=_uuid_or_404(request.POST.get("snapshot", "")),
            reason=request.POST.get("reason", ""),
            source_ip=client_ip(request),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{desktop.name}: reverting to '{snapshot.name}'.")
    return redirect(_safe_next(request) or "dashboard")


def _uuid_or_404(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise Http404("No such snapshot.") from None


# Renaming changes no state and queues no work, so it is no action of the table; it
# shares the table's route (desktops/<id>/<action>/), which the table never names so.
RENAME = "rename"


def _rename(request: HttpRequest, desktop: Desktop) -> HttpResponse:
    """The form twin of PATCH /api/desktops/{id}/ {"name"}."""
    old_name = desktop.name
    try:
        desktop_rename(
            actor=signed_in(request.user),
            desktop=desktop,
            name=request.POST.get("name", ""),
            source_ip=client_ip(request),
        )
    except ServiceError as exc:
        messages.error(request, f"{old_name} was not renamed: {exc.message}")
    else:
        messages.success(request, f"{old_name} is now called {desktop.name}.")
    return redirect(_safe_next(request) or "dashboard")


@login_required
@require_POST
def console_session_end_view(request: HttpRequest, pk: str) -> HttpResponse:
    """The owner's End button: end someone else's console session on this desktop (404
    unless the user owns the desktop or is an admin, and the session is on it).

    A form post returns to `next`; the notice's script asks for JSON and stays put.
    """
    sessions = console_sessions_endable_by(user=request.user).filter(desktop_id=pk)
    session = get_object_or_404(sessions, pk=_int_or_404(request.POST.get("session", "")))
    try:
        console_session_end(
            actor=signed_in(request.user), session=session, source_ip=client_ip(request)
        )
    except ServiceError as exc:
        ended, text = False, exc.message
    else:
        ended, text = True, f"You ended {session.user.get_username()}'s console session."
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"detail": text}, status=200 if ended else 409)
    (messages.success if ended else messages.error)(request, text)
    return redirect(_safe_next(request) or "dashboard")


def _int_or_404(value: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise Http404("No such console session.")
    return int(value)


def _safe_next(request: HttpRequest) -> str | None:
    """The `next` page to return to, if it is one of ours (no open redirect)."""
    target = request.POST.get("next", "")
    allowed = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and allowed else None
