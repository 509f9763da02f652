"""Top-level URL routes."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from vms.web import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("helpdesk/", views.helpdesk, name="helpdesk"),
    path("desktops/launch/", views.launch, name="launch"),
    path("desktops/<uuid:pk>/console/", views.console_page, name="console"),
    path("desktops/<uuid:pk>/console.vv", views.spice_file, name="spice-file"),
    path("desktops/<uuid:pk>/thumbnail.png", views.thumbnail, name="thumbnail"),
    path("desktops/<uuid:pk>/<slug:action>/", views.desktop_action, name="desktop-action"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include("vms.api.urls")),
]
