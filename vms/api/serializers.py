"""API representations of templates and desktops."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from rest_framework import serializers

from vms.models import Desktop, DesktopInterface, Template
from vms.roles import sees_all_desktops
from vms.services.core.errors import InvalidName
from vms.services.desktops.requests import NAME_MAX, desktop_name_clean


class TemplateSerializer(serializers.ModelSerializer[Template]):
    class Meta:
        model = Template
        fields = [
            "id",
            "name",
            "description",
            "os_label",
            "vcpus",
            "memory_mib",
            "disk_gib",
            "console_type",
            "persistent",
            "networks",
            "bandwidth_kb_s",
        ]
        read_only_fields = fields

    networks = serializers.SerializerMethodField()

    def get_networks(self, template: Template) -> list[int]:
        """The template's network ids, in NIC order."""
        return [link.network_id for link in template.templatenetwork_set.all()]


class InterfaceSerializer(serializers.ModelSerializer[DesktopInterface]):
    network_name = serializers.CharField(source="network.name", read_only=True)
    addresses = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = DesktopInterface
        fields = ["network", "network_name", "mac", "addresses"]
        read_only_fields = fields


class TemplateNetworksSerializer(serializers.Serializer[Any]):
    networks = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False)
    bandwidth_kb_s = serializers.IntegerField(
        min_value=8, max_value=10_000_000, required=False, allow_null=True
    )

    def validate(self, attrs: dict[str, object]) -> dict[str, object]:
        if not attrs:
            raise serializers.ValidationError("Give networks and/or bandwidth_kb_s.")
        return attrs


class DesktopSerializer(serializers.ModelSerializer[Desktop]):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)
    host = serializers.CharField(
        source="host.name",
        read_only=True,
        default=None,
        help_text="The desktop's hypervisor host: for help-desk and admins only (employees "
        "never see the management plane's names).",
    )
    interfaces = InterfaceSerializer(many=True, read_only=True)

    @cached_property
    def shows_host(self) -> bool:
        """Whether the caller may see host names (no request in the context: no)."""
        request = self.context.get("request")
        return request is not None and sees_all_desktops(request.user)

    def to_representation(self, instance: Desktop) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if not self.shows_host:
            data.pop("host", None)
        return data

    class Meta:
        model = Desktop
        fields = [
            "id",
            "name",
            "owner",
            "template",
            "template_name",
            "host",
            "status",
            "progress",
            "last_error",
            "vcpus",
            "memory_mib",
            "disk_gib",
            "created_at",
            "status_changed_at",
            "last_used_at",
            "interfaces",
        ]
        read_only_fields = fields


def _desktop_name(value: str) -> str:
    """The same rule as the pages (the service's `desktop_name_clean`), as a field error."""
    try:
        return desktop_name_clean(value)
    except InvalidName as exc:
        raise serializers.ValidationError(exc.message) from exc


# The same words as the service's refusal (`desktop_name_clean`).
NAME_TOO_LONG: dict[str, Any] = {
    "max_length": f"The name is too long: at most {NAME_MAX} characters."
}


class DesktopCreateSerializer(serializers.Serializer[Any]):
    template = serializers.IntegerField(min_value=1)
    name = serializers.CharField(
        max_length=NAME_MAX,
        required=False,
        allow_blank=True,
        default="",
        error_messages=NAME_TOO_LONG,
    )

    def validate_name(self, value: str) -> str:
        return _desktop_name(value)

    def validate_template(self, value: int) -> int:
        if not Template.objects.filter(pk=value).exists():
            raise serializers.ValidationError("No such template.")
        return value


class DesktopRenameSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=NAME_MAX, error_messages=NAME_TOO_LONG)

    def validate_name(self, value: str) -> str:
        cleaned = _desktop_name(value)
        if not cleaned:
            raise serializers.ValidationError("Give the desktop a name.")
        return cleaned


class ActionAcceptedSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField()
    desktop = DesktopSerializer()


class ConsoleRequestSerializer(serializers.Serializer[Any]):
    mode = serializers.ChoiceField(choices=["full", "view"], required=False, allow_null=True)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class ConsoleTicketSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField()
    url = serializers.CharField(
        help_text="WebSocket path; send the ticket as the subprotocol "
        "'ticket.<ticket>' beside 'binary', never in the URL."
    )
    expires_at = serializers.DateTimeField()
    mode = serializers.CharField()
