"""The hosts of the fleet, for admins: GET /api/hosts/ and /api/hosts/{name}/."""

from __future__ import annotations

from typing import Any

from rest_framework import mixins, serializers, viewsets
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from vms.models import Host
from vms.roles import is_admin
from vms.services.placement import host_allocations


class IsPortalAdmin(BasePermission):
    """Admins only (anyone else: 403, as for the admin pages)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_admin(request.user)


class HostSerializer(serializers.ModelSerializer[Host]):
    state = serializers.SerializerMethodField()
    capacity = serializers.SerializerMethodField()
    use = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = ["name", "uri", "console_address", "state", "enabled", "capacity", "use",
                  "last_checked_at", "last_check_error"]  # fmt: skip

    def get_state(self, host: Host) -> str:
        """`disabled` (out of placement), `up` or `down` (by its last heartbeat)."""
        if not host.enabled:
            return "disabled"
        return "up" if host.last_check_ok else "down"

    def get_capacity(self, host: Host) -> dict[str, int]:
        return {"vcpus": host.capacity_vcpus, "memory_mib": host.capacity_memory_mib,
                "disk_gib": host.capacity_disk_gib}  # fmt: skip

    def get_use(self, host: Host) -> dict[str, int]:
        used: dict[int, dict[str, int]] = self.context["allocations"]
        mine = used.get(host.pk, {})
        return {part: mine.get(f"used_{part}", 0) for part in ("vcpus", "memory_mib", "disk_gib")}


class HostViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The fleet's hosts with capacity, allocation and health (admins only)."""

    serializer_class = HostSerializer
    permission_classes = [IsPortalAdmin]
    lookup_field = "name"
    queryset = Host.objects.order_by("name")

    def get_serializer_context(self) -> dict[str, Any]:
        # One allocation query for the whole page, not one per host.
        return {**super().get_serializer_context(), "allocations": host_allocations()}
