"""Request middleware of the portal."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from whitenoise.middleware import WhiteNoiseFileResponse

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


class BufferedStaticFilesMiddleware:
    """Send WhiteNoise's static files as plain responses, read whole (the largest is 145 KB).

    Under ASGI, Django streams a FileResponse by handing its synchronous file iterator to a
    thread for every file. A console page fetches about 90 script modules at once; in the
    test suite a daphne stopped answering part-way through them (a page that loaded 49 of
    its modules, then nothing more for minutes), and a FileResponse streamed by daphne is
    a known way to end there (open-swarm #425: "CurrentThreadExecutor already quit").
    A buffered response takes no such thread. Placed before WhiteNoise's middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if not isinstance(response, WhiteNoiseFileResponse):
            return response
        buffered = HttpResponse(b"".join(response.streaming_content), status=response.status_code)
        response.close()
        for header, value in response.items():
            buffered[header] = value
        return buffered
