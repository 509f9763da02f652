"""Pages: health, dashboard. They read the database only, never libvirt."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from vms.console.services import default_mode
from vms.health import health_report
from vms.selectors import desktops_visible_to, templates_for_user
from vms.services.quotas import effective_quota, usage


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
    context = {
        "templates": templates_for_user(user=request.user),
        "desktops": desktops_visible_to(user=request.user).filter(owner=request.user),
        "quota": effective_quota(user=request.user),
        "used": usage(user=request.user),
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
    }
    return render(request, "vms/console.html", context)
