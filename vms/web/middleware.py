"""Request middleware of the portal."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.loader import render_to_string

from vms.roles import is_admin


class StaffOnlyAdminMiddleware:
    """Answer 403 when a logged-in user who is not staff opens an admin page.

    Django's admin would show its login form again; a plain refusal is clearer and is what
    the portal's permission contract says (admin routes answer 403 to non-staff).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if request.path.startswith("/admin/") and user.is_authenticated and not is_admin(user):
            raise PermissionDenied("The admin pages are for administrators.")
        return self.get_response(request)


class MethodNotAllowedPageMiddleware:
    """Give the pages' empty 405 answers (``require_POST`` and friends) the portal's own
    error page, keeping the Allow header. The API keeps its JSON errors."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not _is_bare_405(request, response):
            return response
        page = HttpResponseNotAllowed(
            response["Allow"].split(", "),
            content=render_to_string("405.html", request=request),
        )
        return page


def _is_bare_405(request: HttpRequest, response: HttpResponse) -> bool:
    return (
        response.status_code == 405
        and isinstance(response, HttpResponseNotAllowed)
        and not response.content
        and not request.path.startswith("/api/")
    )
