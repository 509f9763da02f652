"""API routes, mounted under /api/."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from vms.api.hosts import HostViewSet
from vms.api.metrics import DesktopMetricsView, HostMetricsView
from vms.api.networks import NetworkViewSet
from vms.api.views import DesktopViewSet, TemplateViewSet

router = DefaultRouter(trailing_slash=True)
router.register("templates", TemplateViewSet, basename="template")
router.register("desktops", DesktopViewSet, basename="desktop")
router.register("hosts", HostViewSet, basename="host")
router.register("networks", NetworkViewSet, basename="network")

urlpatterns = [
    # The schema is public, as API schemas usually are: it describes, it grants nothing.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api-schema"),
    path("desktops/<uuid:pk>/metrics/", DesktopMetricsView.as_view(), name="desktop-metrics"),
    path("hosts/<slug:name>/metrics/", HostMetricsView.as_view(), name="host-metrics"),
    *router.urls,
]
