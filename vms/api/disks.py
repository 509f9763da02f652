"""API routes for snapshots, backups and restores (docs/backups.md). Another user's
desktop or backup answers 404 on every one of them (they are looked up through
`desktops_visible_to` / `backups_visible_to`)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from vms.api.serializers import DesktopSerializer
from vms.models import Backup, Desktop, Restore, Snapshot, TemplateVersion
from vms.roles import signed_in
from vms.selectors import desktops_visible_to
from vms.services.catalog.versions import template_version_publish
from vms.services.disks import backups, snapshots
from vms.web.client import client_ip


class SnapshotSerializer(serializers.ModelSerializer[Snapshot]):
    class Meta:
        model = Snapshot
        fields = ["id", "name", "status", "with_memory", "size_bytes", "created_at", "last_error"]
        read_only_fields = fields


class BackupSerializer(serializers.ModelSerializer[Backup]):
    incremental = serializers.BooleanField(read_only=True)

    class Meta:
        model = Backup
        fields = [
            "id",
            "desktop",
            "status",
            "incremental",
            "progress",
            "bytes_written",
            "virtual_bytes",
            "scheduled",
            "created_at",
            "finished_at",
            "seconds",
            "last_error",
        ]
        read_only_fields = fields


class RestoreSerializer(serializers.ModelSerializer[Restore]):
    backup_created_at = serializers.DateTimeField(source="backup.created_at", read_only=True)

    class Meta:
        model = Restore
        fields = [
            "id",
            "backup",
            "backup_created_at",
            "desktop",
            "target",
            "status",
            "progress",
            "created_at",
            "finished_at",
            "seconds",
            "last_error",
        ]
        read_only_fields = fields


def _uuid(value: str, what: str) -> UUID:
    """The id of the URL, or 404 (a malformed id names nothing, like another's)."""
    try:
        return UUID(value)
    except ValueError:
        raise NotFound(f"No such {what}.") from None


def _desktop(request: Request, desktop_id: str) -> Desktop:
    found = desktops_visible_to(user=request.user).filter(pk=_uuid(desktop_id, "desktop")).first()
    if found is None:
        raise NotFound("No such desktop.")
    return found


def _backup(request: Request, backup_id: str) -> Backup:
    rows = backups.backups_visible_to(user=signed_in(request.user))
    row = rows.filter(pk=_uuid(backup_id, "backup")).first()
    if row is None:
        raise NotFound("No such backup.")
    return row


def _text(request: Request, field: str) -> str:
    value: Any = request.data.get(field, "") if hasattr(request.data, "get") else ""
    if not isinstance(value, str):
        raise serializers.ValidationError({field: "Must be a string."})
    return value


NameBody = inline_serializer("SnapshotRequest", {"name": serializers.CharField()})


@extend_schema(
    request=NameBody, responses={200: SnapshotSerializer(many=True), 202: SnapshotSerializer}
)
@api_view(["GET", "POST"])
def snapshot_list(request: Request, desktop_id: str) -> Response:
    """A desktop's snapshots; POST `{"name"}` takes one (202)."""
    desktop = _desktop(request, desktop_id)
    if request.method == "GET":
        rows = desktop.snapshots.exclude(status="deleted").order_by("created_at")
        return Response(SnapshotSerializer(rows, many=True).data)
    snapshot = snapshots.snapshot_create(
        actor=signed_in(request.user),
        desktop=desktop,
        name=_text(request, "name"),
        source_ip=client_ip(request),
    )
    return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=None, responses={202: SnapshotSerializer})
@api_view(["DELETE"])
def snapshot_detail(request: Request, desktop_id: str, snapshot_id: str) -> Response:
    """Delete a snapshot (202)."""
    desktop = _desktop(request, desktop_id)
    _snapshot_of(desktop, snapshot_id)
    snapshot = snapshots.snapshot_delete(
        actor=signed_in(request.user),
        desktop=desktop,
        snapshot_id=snapshot_id,
        source_ip=client_ip(request),
    )
    return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_202_ACCEPTED)


def _snapshot_of(desktop: Desktop, snapshot_id: str) -> Snapshot:
    rows = desktop.snapshots.exclude(status="deleted")
    found = rows.filter(pk=_uuid(snapshot_id, "snapshot")).first()
    if found is None:
        raise NotFound("No such snapshot.")
    return found


ReasonBody = inline_serializer("RevertRequest", {"reason": serializers.CharField(required=False)})


@extend_schema(request=ReasonBody, responses={202: SnapshotSerializer})
@api_view(["POST"])
def snapshot_revert(request: Request, desktop_id: str, snapshot_id: str) -> Response:
    """Revert to a snapshot (202); help-desk staff must give a `reason`."""
    desktop = _desktop(request, desktop_id)
    _snapshot_of(desktop, snapshot_id)
    snapshot = snapshots.snapshot_revert(
        actor=signed_in(request.user),
        desktop=desktop,
        snapshot_id=snapshot_id,
        reason=_text(request, "reason"),
        source_ip=client_ip(request),
    )
    return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=None, responses={200: BackupSerializer(many=True), 202: BackupSerializer})
@api_view(["GET", "POST"])
def backup_list(request: Request, desktop_id: str) -> Response:
    """A desktop's backups (ready, and one under way with its progress); POST takes one."""
    desktop = _desktop(request, desktop_id)
    if request.method == "GET":
        return Response(BackupSerializer(backups.backups_listed(desktop=desktop), many=True).data)
    backup = backups.backup_request(
        actor=signed_in(request.user), desktop=desktop, source_ip=client_ip(request)
    )
    return Response(BackupSerializer(backup).data, status=status.HTTP_202_ACCEPTED)


TargetBody = inline_serializer(
    "RestoreRequest", {"target": serializers.ChoiceField(["new", "in_place"])}
)


@extend_schema(request=TargetBody, responses={202: DesktopSerializer})
@api_view(["POST"])
def backup_restore(request: Request, backup_id: str) -> Response:
    """Restore a backup to a new desktop or in place (202 with the desktop)."""
    backup = _backup(request, backup_id)
    desktop = backups.backup_restore(
        actor=signed_in(request.user),
        backup=backup,
        target=_text(request, "target"),
        source_ip=client_ip(request),
    )
    desktop.refresh_from_db()
    return Response(
        DesktopSerializer(desktop, context={"request": request}).data,
        status=status.HTTP_202_ACCEPTED,
    )


@extend_schema(request=None, responses={202: BackupSerializer})
@api_view(["POST"])
def backup_cancel(request: Request, backup_id: str) -> Response:
    """Cancel a backup under way (202)."""
    backup = _backup(request, backup_id)
    backups.backup_cancel(
        actor=signed_in(request.user), backup=backup, source_ip=client_ip(request)
    )
    backup.refresh_from_db()
    return Response(BackupSerializer(backup).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=None, responses={200: RestoreSerializer(many=True)})
@api_view(["GET"])
def restore_list(request: Request, desktop_id: str) -> Response:
    """The restores into a desktop, newest first (the last ten): one under way shows its
    progress (percent), an ended one how it ended."""
    desktop = _desktop(request, desktop_id)
    rows = desktop.restores.select_related("backup").order_by("-created_at")[:10]
    return Response(RestoreSerializer(rows, many=True).data)


@extend_schema(request=None, responses={202: RestoreSerializer})
@api_view(["POST"])
def restore_cancel(request: Request, restore_id: str) -> Response:
    """Cancel a restore under way (202): in place, the desktop keeps its disk; to a new
    desktop, that desktop is deleted."""
    rows = backups.restores_visible_to(user=signed_in(request.user))
    restore = rows.filter(pk=_uuid(restore_id, "restore")).first()
    if restore is None:
        raise NotFound("No such restore.")
    backups.restore_cancel(
        actor=signed_in(request.user), restore=restore, source_ip=client_ip(request)
    )
    restore.refresh_from_db()
    return Response(RestoreSerializer(restore).data, status=status.HTTP_202_ACCEPTED)


class TemplateVersionSerializer(serializers.ModelSerializer[TemplateVersion]):
    class Meta:
        model = TemplateVersion
        fields = [
            "id",
            "template",
            "number",
            "status",
            "progress",
            "made_from",
            "made_from_owner",
            "made_from_owner_name",
            "made_from_name",
            "created_by",
            "created_at",
            "note",
            "last_error",
        ]
        read_only_fields = fields


PublishBody = inline_serializer(
    "PublishVersionRequest",
    {"confirm_owner": serializers.CharField(), "note": serializers.CharField(required=False)},
)


@extend_schema(request=PublishBody, responses={202: TemplateVersionSerializer})
@api_view(["POST"])
def version_publish(request: Request, desktop_id: str) -> Response:
    """Publish a stopped desktop as its template's new version (admins; 202). Confirmed by
    `confirm_owner`, the username of the desktop's owner (400 otherwise); the version
    records the source desktop and its owner."""
    desktop = _desktop(request, desktop_id)
    version = template_version_publish(
        actor=signed_in(request.user),
        desktop=desktop,
        confirm_owner=_text(request, "confirm_owner"),
        note=_text(request, "note"),
        source_ip=client_ip(request),
    )
    return Response(TemplateVersionSerializer(version).data, status=status.HTTP_202_ACCEPTED)
