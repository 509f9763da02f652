"""Monitoring history for the charts: GET /api/desktops/{id}/metrics/?period=1h|24h|7d
(owner, help-desk, admin; 404 for anyone else) and GET /api/hosts/{name}/metrics/ (admins).
Both read stored samples only (vms.services.metrics.history), never libvirt."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from vms.api.hosts import IsPortalAdmin
from vms.models import Host
from vms.models.metrics import DesktopSample, HostSample
from vms.selectors import desktops_visible_to
from vms.services.metrics.history import PERIODS, history_series

PERIOD = OpenApiParameter(
    "period",
    str,
    enum=list(PERIODS),
    default="1h",
    description="1h: raw samples; 24h: 1-minute means and maxima; 7d: 1-hour ones",
)
SERIES = inline_serializer(
    name="MetricsSeries",
    fields={
        "period": serializers.ChoiceField(choices=list(PERIODS)),
        "resolution_s": serializers.FloatField(help_text="seconds between points"),
        "series": serializers.DictField(
            child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
            help_text="`t` (epoch seconds) and one column per field, oldest first",
        ),
    },
)

BAD_PERIOD = OpenApiResponse(description="`period` is not one of 1h, 24h, 7d (a `detail` says so)")


def _period(request: Request) -> str:
    period = request.query_params.get("period", "1h")
    if period not in PERIODS:
        raise ValidationError({"detail": f"period must be one of {', '.join(PERIODS)}."})
    return period


def _series(model: Any, owner_id: Any, request: Request) -> Response:
    period = _period(request)
    return Response(
        history_series(model=model, owner_id=owner_id, period=period, now=timezone.now())
    )


class DesktopMetricsView(APIView):
    """A desktop's CPU (percent of its vCPUs), memory (MiB), disk and network rates."""

    @extend_schema(
        parameters=[PERIOD],
        responses={200: SERIES, 400: BAD_PERIOD, 404: OpenApiResponse(description="not yours")},
        operation_id="desktops_metrics",
    )
    def get(self, request: Request, pk: str) -> Response:
        desktop = get_object_or_404(desktops_visible_to(user=request.user), pk=pk)
        return _series(DesktopSample, desktop.pk, request)


class HostMetricsView(APIView):
    """A host's CPU (percent of all CPUs), memory, running desktops and pool fill."""

    permission_classes = [IsPortalAdmin]

    @extend_schema(
        parameters=[PERIOD],
        responses={200: SERIES, 400: BAD_PERIOD, 403: OpenApiResponse(description="admins only")},
        operation_id="hosts_metrics",
    )
    def get(self, request: Request, name: str) -> Response:
        host = get_object_or_404(Host, name=name)
        return _series(HostSample, host.pk, request)
