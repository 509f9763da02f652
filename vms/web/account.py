"""Logging out: a GET shows a confirmation (a link to /logout/ must not log anyone out, and
must not answer an empty 405 either); the POST logs out and says so."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render


class LogoutView(auth_views.LogoutView):
    """Django's logout (POST only, CSRF-checked), plus a confirmation page on GET."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect("login")
        return render(request, "registration/logout_confirm.html")
