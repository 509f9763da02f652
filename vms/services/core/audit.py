"""The audit trail: one row for every state change or sensitive action.

Rows are append-only (vms.models.AppendOnlyModel); `audit_retention_apply` is the only
code that removes any, and only those older than AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection, transaction
from django.utils import timezone

from vms.models import AuditEvent, ConsoleSession, Desktop


class AuditVerb(StrEnum):
    """What an audit row records (`AuditEvent.action`): every verb the portal writes.
    The values are what stored rows hold; a new verb is a new member. Besides the named
    ones: `desktop.<action>` for a desktop action asked for (`DesktopAction.audit_verb`)
    and `desktop.<state>` for a desktop's move to that state (`desktop_advance`)."""

    AUDIT_RETENTION = "audit.retention"

    BACKUP_CANCEL = "backup.cancel"
    BACKUP_CANCELLED = "backup.cancelled"
    BACKUP_EXPIRED = "backup.expired"
    BACKUP_FAILED = "backup.failed"
    BACKUP_READY = "backup.ready"
    BACKUP_REQUEST = "backup.request"
    BACKUP_RESTORE = "backup.restore"
    BACKUP_RESTORE_CANCEL = "backup.restore_cancel"
    BACKUP_RESTORE_CANCELLED = "backup.restore_cancelled"
    BACKUP_RESTORE_FAILED = "backup.restore_failed"
    BACKUP_RESTORED = "backup.restored"

    CONSOLE_CLOSE = "console.close"
    CONSOLE_END = "console.end"
    CONSOLE_OPEN = "console.open"
    CONSOLE_SPICE_CONNECT = "console.spice_connect"
    CONSOLE_TALLY = "console.tally"
    CONSOLE_TICKET = "console.ticket"

    DESKTOP_BACKUP = "desktop.backup"
    DESKTOP_CREATE = "desktop.create"
    DESKTOP_DELETE = "desktop.delete"
    DESKTOP_DELETED = "desktop.deleted"
    DESKTOP_ERROR = "desktop.error"
    DESKTOP_FORCE_STOP = "desktop.force_stop"
    DESKTOP_MIGRATE = "desktop.migrate"
    DESKTOP_MIGRATED = "desktop.migrated"
    DESKTOP_MIGRATION_FAILED = "desktop.migration_failed"
    DESKTOP_PROVISION = "desktop.provision"
    DESKTOP_REBOOT = "desktop.reboot"
    DESKTOP_RECONCILED = "desktop.reconciled"
    DESKTOP_RECOVER = "desktop.recover"
    DESKTOP_RECOVERED = "desktop.recovered"
    DESKTOP_RECOVERING = "desktop.recovering"
    DESKTOP_RECOVERY_CANCELLED = "desktop.recovery_cancelled"
    DESKTOP_RECOVERY_REFUSED = "desktop.recovery_refused"
    DESKTOP_REHOMED = "desktop.rehomed"
    DESKTOP_RENAME = "desktop.rename"
    DESKTOP_RESET = "desktop.reset"
    DESKTOP_RESET_DONE = "desktop.reset_done"
    DESKTOP_RESTORE = "desktop.restore"
    DESKTOP_RUNNING = "desktop.running"
    DESKTOP_SNAPSHOT = "desktop.snapshot"
    DESKTOP_SNAPSHOT_DELETE = "desktop.snapshot_delete"
    DESKTOP_SNAPSHOT_REVERT = "desktop.snapshot_revert"
    DESKTOP_START = "desktop.start"
    DESKTOP_STARTING = "desktop.starting"
    DESKTOP_STOP = "desktop.stop"
    DESKTOP_STOPPED = "desktop.stopped"

    HOST_DISABLE = "host.disable"
    HOST_DOWN = "host.down"
    HOST_MAINTENANCE = "host.maintenance"
    HOST_REGISTER = "host.register"
    HOST_UP = "host.up"

    NETWORK_CREATE = "network.create"
    NETWORK_DELETE = "network.delete"
    NETWORK_UPDATE = "network.update"

    SNAPSHOT_CREATE = "snapshot.create"
    SNAPSHOT_DELETE = "snapshot.delete"
    SNAPSHOT_DELETED = "snapshot.deleted"
    SNAPSHOT_ERROR = "snapshot.error"
    SNAPSHOT_READY = "snapshot.ready"
    SNAPSHOT_REVERT = "snapshot.revert"
    SNAPSHOT_REVERTED = "snapshot.reverted"

    TEMPLATE_BANDWIDTH = "template.bandwidth"
    TEMPLATE_IMPORT = "template.import"
    TEMPLATE_NETWORKS = "template.networks"
    TEMPLATE_VERSION_CANCEL = "template.version_cancel"
    TEMPLATE_VERSION_DELETE = "template.version_delete"
    TEMPLATE_VERSION_FAILED = "template.version_failed"
    TEMPLATE_VERSION_PUBLISH = "template.version_publish"
    TEMPLATE_VERSION_READY = "template.version_ready"


def audit_record(
    *,
    action: AuditVerb,
    actor: User | AnonymousUser | None = None,
    desktop: Desktop | None = None,
    source_ip: str | None = None,
    **detail: Any,
) -> AuditEvent:
    """Write one audit row. `detail` must never hold secrets (tickets, passwords)."""
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        action=str(action), actor=user, desktop=desktop, source_ip=source_ip, detail=detail
    )


def audit_retention_apply() -> dict[str, int]:
    """Remove audit events, and closed console sessions, older than AUDIT_RETENTION_DAYS
    (0: keep everything); record how many of each went in an `audit.retention` event."""
    days: int = settings.AUDIT_RETENTION_DAYS
    if days == 0:
        return {"audit_events": 0, "console_sessions": 0}
    with transaction.atomic():
        before, removed = _expire(days=days)
        if any(removed.values()):  # hourly runs that find nothing leave no trace
            audit_record(
                action=AuditVerb.AUDIT_RETENTION,
                retention_days=days,
                removed_before=before.isoformat(),
                audit_events=removed["audit_events"],
                console_sessions=removed["console_sessions"],
            )
    return removed


def _expire(*, days: int) -> tuple[datetime, dict[str, int]]:
    """On PostgreSQL, through the expiry table, whose trigger is the only thing the
    append-only triggers let delete (migration 0012); elsewhere through the ORM."""
    if connection.vendor != "postgresql":
        before = timezone.now() - timedelta(days=days)
        return before, {
            "audit_events": AuditEvent.objects.expire(before=before),
            "console_sessions": ConsoleSession.objects.expire(before=before),
        }
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO vms_audit_expiry (retention_days) VALUES (%s)"
            " RETURNING cutoff, events_removed, sessions_removed",
            [days],
        )
        cutoff, events, sessions = cursor.fetchone()
    return cutoff, {"audit_events": int(events), "console_sessions": int(sessions)}
