"""The hosts of the fleet, for admins: GET /api/hosts/ and /api/hosts/{name}/, and
POST /api/hosts/{name}/maintenance/ {"enabled": true | false} (202; enabling drains)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Q
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from vms.models import DesktopStatus, Host, HostStatus
from vms.roles import is_admin
from vms.services.fleet.membership import host_maintenance_set
from vms.services.fleet.placement import PARTS, allocation_annotations


class IsPortalAdmin(BasePermission):
    """Admins only (anyone else: 403, as for the admin pages)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_admin(request.user)


class HostSerializer(serializers.ModelSerializer[Host]):
    state = serializers.SerializerMethodField()
    capacity = serializers.SerializerMethodField()
    use = serializers.SerializerMethodField()
    load = serializers.SerializerMethodField()
    desktops = serializers.IntegerField(source="desktop_count", read_only=True)

    class Meta:
        model = Host
        fields = ["name", "uri", "console_address", "state", "enabled", "maintenance",
                  "capacity", "use", "load", "desktops", "last_checked_at",
                  "last_heartbeat_at", "last_check_error", "disk_lock_ok",
                  "disk_lock_note"]  # fmt: skip

    def get_state(self, host: Host) -> str:
        """`disabled` (out of placement), `down` (no heartbeat, or its check fails),
        `maintenance` (draining, or drained), or `up`."""
        if not host.enabled:
            return "disabled"
        if host.status == HostStatus.DOWN or not host.last_check_ok:
            return "down"
        return "maintenance" if host.maintenance else "up"

    def get_capacity(self, host: Host) -> dict[str, float]:
        return {"vcpus": host.capacity_vcpus, "memory_mib": host.capacity_memory_mib,
                "disk_gib": host.capacity_disk_gib, "cpu_overcommit": host.cpu_overcommit,
                "memory_overcommit": host.memory_overcommit}  # fmt: skip

    def get_use(self, host: Host) -> dict[str, int]:
        return {part: getattr(host, f"used_{part}") for part in PARTS}

    def get_load(self, host: Host) -> dict[str, Any]:
        """The last heartbeat's sample of what the host really has and uses."""
        return {"cpus": host.load_cpus, "memory_mib": host.load_memory_mib,
                "available_memory_mib": host.load_available_memory_mib,
                "running_guests": host.load_running_guests,
                "cpu_percent": host.load_cpu_percent}  # fmt: skip


class MaintenanceSerializer(serializers.Serializer[Any]):
    enabled = serializers.BooleanField()


class HostViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Host]):
    """The fleet's hosts with capacity, allocation, live load and health (admins only)."""

    serializer_class = HostSerializer
    permission_classes = [IsPortalAdmin]
    lookup_field = "name"

    def get_queryset(self) -> Any:
        # Allocation and desktop counts in the list's own query, not one query per host.
        left = ~Q(desktops__status=DesktopStatus.DELETED)
        return Host.objects.annotate(
            **allocation_annotations(), desktop_count=Count("desktops", filter=left)
        ).order_by("name")

    @extend_schema(request=MaintenanceSerializer, responses={202: HostSerializer})
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, name: str) -> Response:
        """Put the host in maintenance (it takes no new desktops and is drained: running
        desktops move live to other hosts, stopped ones are re-homed) or take it out."""
        host = self.get_object()
        body = MaintenanceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        actor = request.user
        assert isinstance(actor, User)
        host_maintenance_set(actor=actor, host=host, enabled=body.validated_data["enabled"])
        return Response(self.get_serializer(self.get_object()).data, status.HTTP_202_ACCEPTED)
