"""Top-level URL routes."""

from django.contrib import admin
from django.urls import include, path

from vms.web import account, actions, console, pages
from vms.web.login import PortalLoginView
from vms.web.prometheus import metrics_view

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("home/", pages.home, name="home"),
    path("healthz", pages.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("helpdesk/", pages.helpdesk, name="helpdesk"),
    path("desktops/launch/", actions.launch, name="launch"),
    path("desktops/<uuid:pk>/console/", console.console_page, name="console"),
    path(
        "desktops/<uuid:pk>/console/sessions/end/",
        actions.console_session_end_view,
        name="console-session-end",
    ),
    path("desktops/<uuid:pk>/console/state/", console.console_state, name="console-state"),
    path("desktops/<uuid:pk>/console.vv", console.spice_file, name="spice-file"),
    path("desktops/<uuid:pk>/thumbnail.png", console.thumbnail, name="thumbnail"),
    path("desktops/<uuid:pk>/<slug:action>/", actions.desktop_action, name="desktop-action"),
    path("login/", PortalLoginView.as_view(), name="login"),
    path("logout/", account.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include("vms.api.urls")),
]
