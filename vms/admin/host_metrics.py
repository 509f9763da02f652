"""The monitoring part of an admin's host page: charts of the host's CPU, memory and
desktops (drawn by static/js/metrics.js from the metrics API and the live feed), its
capacity bars, its open alerts, and its running desktops with their own small charts."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from vms.models import DesktopStatus, Host
from vms.services.metrics.history import PERIODS
from vms.services.metrics.sampling import alerts_open


def host_monitoring_context(host: Host, *, bars: list[tuple[str, str]]) -> dict[str, Any]:
    """Template context for templates/admin/vms/host/change_form.html."""
    desktops = (
        host.desktops.filter(status=DesktopStatus.RUNNING)
        .select_related("owner", "load")
        .order_by("name")
    )
    return {
        "metrics_bars": bars,
        "metrics_alerts": alerts_open(host=host),
        "metrics_desktops": list(desktops),
        "metrics_periods": list(PERIODS),
        "usage_report_url": reverse("admin:vms_usage_report"),
    }
