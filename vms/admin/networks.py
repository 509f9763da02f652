"""Desktop networks: NAT, isolated or bridged, with their subnet, isolation and the gateway
ports desktops may reach; a network still in use cannot be deleted or reshaped."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from vms.models import Network
from vms.services.core.errors import ServiceError
from vms.services.networks.desktop_networks import (
    network_addressing,
    network_clean,
    network_create,
    network_delete,
    network_in_use,
    network_update,
)


class GatewayPortsField(forms.Field):
    """TCP ports as "80, 8080" (stored as a list of numbers)."""

    widget = forms.TextInput

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(str(p) for p in value)
        return str(value or "")

    def to_python(self, value: Any) -> list[int]:
        text = str(value or "").replace(",", " ").split()
        try:
            return [int(p) for p in text]
        except ValueError:
            raise ValidationError("Give TCP port numbers separated by commas.") from None


class NetworkForm(forms.ModelForm[Network]):
    gateway_ports = GatewayPortsField(
        required=False,
        help_text="TCP ports on the gateway address desktops may reach, e.g. 80, 443 "
        "(DHCP and DNS always pass; every other port of the host is dropped).",
    )

    class Meta:
        model = Network
        fields = ["name", "mode", "subnet", "dhcp_start", "dhcp_end", "bridge",
                  "isolate_desktops", "gateway_ports"]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.instance.pk and (reason := network_in_use(self.instance)):
            before = Network.objects.get(pk=self.instance.pk)
            changed = [f for f in ("name", "mode", "subnet", "dhcp_start", "dhcp_end", "bridge")
                       if data.get(f) != getattr(before, f) and f in data]  # fmt: skip
            if changed:
                raise ValidationError(f"{reason} Its {', '.join(changed)} cannot change now.")
        candidate = Network(pk=self.instance.pk, **{f: data.get(f) for f in self.Meta.fields})
        candidate.gateway_ports = data.get("gateway_ports") or []
        candidate.subnet = candidate.subnet or ""
        candidate.bridge = candidate.bridge or ""
        try:
            network_clean(candidate)
        except ServiceError as exc:
            raise ValidationError(exc.message) from exc
        for field in ("subnet", "dhcp_start", "dhcp_end", "bridge", "gateway_ports"):
            data[field] = getattr(candidate, field)
        return data


@admin.register(Network)
class NetworkAdmin(admin.ModelAdmin[Network]):
    form = NetworkForm
    list_display = ["name", "mode", "subnet", "gateway", "isolate_desktops", "ports",
                    "template_count", "interface_count"]  # fmt: skip
    list_filter = ["mode", "isolate_desktops"]
    search_fields = ["name", "subnet", "bridge"]
    actions = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[Network]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_templates=Count("templates", distinct=True),
                n_interfaces=Count("interfaces", distinct=True),
            )
        )

    @admin.display(description="Gateway")
    def gateway(self, network: Network) -> str:
        addressing = network_addressing(network)
        return addressing.gateway if addressing else f"bridge {network.bridge}"

    @admin.display(description="Gateway ports")
    def ports(self, network: Network) -> str:
        return ", ".join(str(p) for p in network.gateway_ports) or "DHCP, DNS only"

    @admin.display(description="Templates", ordering="n_templates")
    def template_count(self, network: Network) -> int:
        return int(getattr(network, "n_templates", 0))

    @admin.display(description="Desktop NICs", ordering="n_interfaces")
    def interface_count(self, network: Network) -> int:
        return int(getattr(network, "n_interfaces", 0))

    def save_model(self, request: HttpRequest, obj: Network, form: Any, change: bool) -> None:
        """Through the services, as the API (the form has checked the same rules)."""
        assert isinstance(request.user, User)
        fields = {name: form.cleaned_data[name] for name in NetworkForm.Meta.fields}
        try:
            if change:
                network_update(actor=request.user, network=Network.objects.get(pk=obj.pk),
                               **fields)  # fmt: skip
            else:
                obj.pk = network_create(actor=request.user, **fields).pk
        except ServiceError as exc:
            raise PermissionDenied(exc.message) from exc

    def has_delete_permission(self, request: HttpRequest, obj: Network | None = None) -> bool:
        return super().has_delete_permission(request, obj) and (
            obj is None or not network_in_use(obj)
        )

    def delete_model(self, request: HttpRequest, obj: Network) -> None:
        assert isinstance(request.user, User)
        try:
            network_delete(actor=request.user, network=obj)
        except ServiceError as exc:
            self.message_user(request, exc.message, level=messages.ERROR)
