"""API views: thin. They read through selectors and write through services."""

from __future__ import annotations

from collections.abc import Callable

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from vms.api.serializers import (
    ActionAcceptedSerializer,
    ConsoleRequestSerializer,
    ConsoleTicketSerializer,
    DesktopCreateSerializer,
    DesktopRenameSerializer,
    DesktopSerializer,
    TemplateNetworksSerializer,
    TemplateSerializer,
)
from vms.models import Desktop, Template
from vms.roles import is_admin, signed_in
from vms.selectors import desktops_visible_to, templates_for_user
from vms.services.consoles import TicketBinding, console_socket_path, console_ticket_issue
from vms.services.desktops.actions import ACTIONS, DesktopAction, actions_offered
from vms.services.desktops.requests import desktop_act, desktop_create, desktop_rename
from vms.services.networks.desktop_networks import template_bandwidth_set, template_networks_set
from vms.web.client import client_ip


class TemplateViewSet(viewsets.ReadOnlyModelViewSet[Template]):
    """Templates the caller may launch."""

    serializer_class = TemplateSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return templates_for_user(user=self.request.user).prefetch_related("templatenetwork_set")

    @extend_schema(request=TemplateNetworksSerializer, responses={200: TemplateSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Set the template's networks, in NIC order: `{"networks": [ids]}` (admins)."""
        if not is_admin(request.user):
            raise PermissionDenied("Only admins change templates.")
        template = Template.objects.filter(pk=int(pk)).first() if pk and pk.isdigit() else None
        if template is None:
            raise NotFound("No such template.")
        body = TemplateNetworksSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if "networks" in body.validated_data:
            template_networks_set(
                actor=signed_in(request.user),
                template=template,
                network_ids=body.validated_data["networks"],
            )
        if "bandwidth_kb_s" in body.validated_data:
            template_bandwidth_set(
                actor=signed_in(request.user),
                template=template,
                kb_s=body.validated_data["bandwidth_kb_s"],
            )
        return Response(TemplateSerializer(template).data)


@extend_schema(parameters=[OpenApiParameter("user", str, description="help-desk/admin: owner")])
class DesktopViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Desktop]
):
    """Own desktops; help-desk and admins see anyone's (narrow with ?user=<username>)."""

    serializer_class = DesktopSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return desktops_visible_to(
            user=self.request.user, owner_username=self._owner_filter()
        ).prefetch_related("interfaces__network")

    def _owner_filter(self) -> str | None:
        """The ?user= filter, refused (400) when it cannot be a username."""
        owner = self.request.query_params.get("user")
        if owner is not None and ("\x00" in owner or len(owner) > 150):
            raise ValidationError({"user": "Not a valid username."})
        return owner

    @extend_schema(request=DesktopCreateSerializer, responses={202: DesktopSerializer})
    def create(self, request: Request) -> Response:
        params = DesktopCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        desktop = desktop_create(
            user=signed_in(request.user),
            template_id=params.validated_data["template"],
            name=params.validated_data["name"],
            source_ip=client_ip(request),
        )
        return Response(
            DesktopSerializer(desktop, context={"request": request}).data,
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=DesktopRenameSerializer, responses={200: DesktopSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        """Rename the desktop: `{"name": ...}` (owner and admin; 404 if not visible)."""
        desktop: Desktop = self.get_object()
        params = DesktopRenameSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        desktop_rename(
            actor=signed_in(request.user),
            desktop=desktop,
            name=params.validated_data["name"],
            source_ip=client_ip(request),
        )
        desktop.refresh_from_db()
        return Response(self.get_serializer(desktop).data)

    @extend_schema(request=None, responses={202: ActionAcceptedSerializer})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        return self.act(_delete_action().name)

    @extend_schema(request=ConsoleRequestSerializer, responses={200: ConsoleTicketSerializer})
    @action(detail=True, methods=["post"])
    def console(self, request: Request, pk: str | None = None) -> Response:
        """A one-time ticket (valid <= 60 s) for the console relay."""
        desktop: Desktop = self.get_object()
        params = ConsoleRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        issued = console_ticket_issue(
            user=signed_in(request.user),
            desktop=desktop,
            mode=params.validated_data.get("mode"),
            reason=params.validated_data["reason"],
            source_ip=client_ip(request),
            binding=_ticket_binding(request),
        )
        body = {
            "ticket": issued.ticket,
            "url": console_socket_path(desktop),
            "expires_at": issued.expires_at,
            "mode": issued.mode,
        }
        return Response(ConsoleTicketSerializer(body).data)

    def act(self, action: str) -> Response:
        """Run one action of the table on the desktop of this URL (404 if not visible)."""
        desktop: Desktop = self.get_object()
        desktop_act(
            actor=signed_in(self.request.user),
            desktop=desktop,
            action=action,
            source_ip=client_ip(self.request),
            params=_action_params(self.request),
        )
        desktop.refresh_from_db()
        label = ACTIONS[action].label
        body = {"detail": f"{label} was accepted.", "desktop": self.get_serializer(desktop).data}
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _ticket_binding(request: Request) -> TicketBinding:
    """A browser session's ticket needs that session; an API token's, the caller's address
    (a script has no session cookie to show the relay)."""
    return TicketBinding.SESSION if request.auth is None else TicketBinding.ADDRESS


def _action_params(request: Request) -> dict[str, str]:
    """The body's fields, for the action to accept or refuse (most take none)."""
    if not hasattr(request.data, "items"):
        raise ValidationError({"detail": "The body must be a JSON object."})
    return {str(key): str(value) for key, value in request.data.items()}


def _delete_action() -> DesktopAction:
    (entry,) = [a for a in actions_offered() if a.http_method == "DELETE"]
    return entry


def _action_route(entry: DesktopAction) -> Callable[..., Response]:
    """`POST /api/desktops/{id}/<action>/` for one action of the table."""

    def route(self: DesktopViewSet, request: Request, pk: str | None = None) -> Response:
        return self.act(entry.name)

    route.__name__ = entry.name.replace("-", "_")
    route.__doc__ = f"{entry.label}: 202, or 409 when the desktop's state does not allow it."
    body = inline_serializer(
        name=f"{entry.name.replace('-', '_').title()}Request",
        fields={name: serializers.CharField(required=False) for name in entry.params},
    )
    documented = extend_schema(
        request=body if entry.params else None,
        responses={202: ActionAcceptedSerializer},
        operation_id=f"desktops_{entry.name.replace('-', '_')}",
    )(route)
    return action(detail=True, methods=["post"], url_path=entry.name)(documented)


# The action routes come from the table: one per offered POST action.
for _entry in actions_offered():
    if _entry.http_method == "POST":
        setattr(DesktopViewSet, _entry.name.replace("-", "_"), _action_route(_entry))
