"""Desktop networks, for admins: GET/POST /api/networks/, GET/PATCH/DELETE
/api/networks/{id}/ (409 while a template or desktop uses the network)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from vms.api.hosts import IsPortalAdmin
from vms.models import Network
from vms.services.networks.desktop_networks import (
    EDITABLE_FIELDS,
    network_addressing,
    network_create,
    network_delete,
    network_update,
)


class NetworkSerializer(serializers.ModelSerializer[Network]):
    gateway = serializers.SerializerMethodField()

    class Meta:
        model = Network
        fields = ["id", "name", "mode", "subnet", "dhcp_start", "dhcp_end", "gateway",
                  "bridge", "isolate_desktops", "gateway_ports", "created_at"]  # fmt: skip
        read_only_fields = fields

    def get_gateway(self, network: Network) -> str | None:
        """The desktops' gateway (the subnet's first address); null when bridged."""
        addressing = network_addressing(network)
        return addressing.gateway if addressing else None


class NetworkWriteSerializer(serializers.Serializer[Any]):
    """What a network is made of; the service checks how the fields fit together."""

    name = serializers.SlugField(max_length=30)
    mode = serializers.ChoiceField(choices=["nat", "isolated", "bridge"])
    subnet = serializers.CharField(max_length=43, required=False, allow_blank=True)
    dhcp_start = serializers.IPAddressField(protocol="IPv4", required=False, allow_null=True)
    dhcp_end = serializers.IPAddressField(protocol="IPv4", required=False, allow_null=True)
    bridge = serializers.CharField(max_length=15, required=False, allow_blank=True)
    isolate_desktops = serializers.BooleanField(required=False)
    gateway_ports = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=65535), required=False
    )


def _body(request: Request, *, partial: bool) -> dict[str, Any]:
    if not hasattr(request.data, "keys"):
        raise ValidationError({"detail": "The body must be a JSON object."})
    unknown = set(request.data.keys()) - EDITABLE_FIELDS
    if unknown:
        raise ValidationError({"detail": f"Unknown field(s): {', '.join(sorted(unknown))}."})
    body = NetworkWriteSerializer(data=request.data, partial=partial)
    body.is_valid(raise_exception=True)
    return dict(body.validated_data)


def _actor(request: Request) -> User:
    assert isinstance(request.user, User)
    return request.user


class NetworkViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Network]
):
    """The portal's desktop networks (admins only)."""

    serializer_class = NetworkSerializer
    permission_classes = [IsPortalAdmin]
    queryset = Network.objects.order_by("name")

    @extend_schema(request=NetworkWriteSerializer, responses={201: NetworkSerializer})
    def create(self, request: Request) -> Response:
        network = network_create(actor=_actor(request), **_body(request, partial=False))
        return Response(NetworkSerializer(network).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=NetworkWriteSerializer, responses={200: NetworkSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        network = self.get_object()
        network_update(actor=_actor(request), network=network, **_body(request, partial=True))
        return Response(NetworkSerializer(network).data)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        network_delete(actor=_actor(request), network=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
