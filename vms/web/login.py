"""The login page: it keeps the username after a failure and tells a wrong password from
a lock-out (django-axes), saying how many minutes the lock-out has left."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

TEMPLATE = "registration/login.html"


class PortalLoginForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "The username or password is wrong.",
    }


class PortalLoginView(LoginView):
    form_class = PortalLoginForm
    template_name = TEMPLATE
    redirect_authenticated_user = True


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """Axes' answer to a locked-out login (AXES_LOCKOUT_CALLABLE): the login page again,
    with the username kept and the minutes left, under axes' own status code (429)."""
    username = str((credentials or {}).get("username") or request.POST.get("username", ""))
    context = {
        # Unbound: a bound form would authenticate again when its errors are read.
        "form": PortalLoginForm(request, initial={"username": username}),
        "locked_out": True,
        "minutes_left": _minutes_left(request, username),
        "next": request.POST.get("next", request.GET.get("next", "")),
    }
    return render(request, TEMPLATE, context, status=settings.AXES_HTTP_RESPONSE_CODE)


def _minutes_left(request: HttpRequest, username: str) -> int | None:
    """Whole minutes (at least 1) until this username and address may try again; None
    when the lock-out does not end by itself (no cool-off is configured)."""
    cool_off: timedelta | None = get_cool_off(request)
    if cool_off is None:
        return None
    latest: datetime | None = (
        AccessAttempt.objects.filter(
            username=username, ip_address=getattr(request, "axes_ip_address", None)
        )
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)
        .first()
    )
    ends = (latest or timezone.now()) + cool_off
    return max(1, math.ceil((ends - timezone.now()).total_seconds() / 60))
