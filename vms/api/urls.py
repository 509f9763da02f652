"""API routes, mounted under /api/."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from vms.api import disks
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
    # Named for the pages' scripts, which read these URLs from the page (vms.web.context).
    path("desktops/<str:desktop_id>/snapshots/", disks.snapshot_list, name="api-snapshots"),
    path(
        "desktops/<str:desktop_id>/snapshots/<str:snapshot_id>/",
        disks.snapshot_detail,
        name="api-snapshot",
    ),
    path(
        "desktops/<str:desktop_id>/snapshots/<str:snapshot_id>/revert/",
        disks.snapshot_revert,
        name="api-snapshot-revert",
    ),
    path("desktops/<str:desktop_id>/backups/", disks.backup_list, name="api-backups"),
    path("backups/<str:backup_id>/restore/", disks.backup_restore, name="api-backup-restore"),
    path("backups/<str:backup_id>/cancel/", disks.backup_cancel, name="api-backup-cancel"),
    path("desktops/<str:desktop_id>/restores/", disks.restore_list, name="api-restores"),
    path("restores/<str:restore_id>/cancel/", disks.restore_cancel, name="api-restore-cancel"),
    path("desktops/<str:desktop_id>/publish-version/", disks.version_publish),
    path("desktops/<uuid:pk>/metrics/", DesktopMetricsView.as_view(), name="desktop-metrics"),
    path("hosts/<slug:name>/metrics/", HostMetricsView.as_view(), name="host-metrics"),
    *router.urls,
]
