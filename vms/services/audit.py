"""The audit trail: one row for every state change or sensitive action.

Rows are append-only (vms.models.AppendOnlyModel); `audit_retention_apply` is the only
code that removes any, and only those older than AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.utils import timezone

from vms.models import AuditEvent, ConsoleSession, Desktop


def audit_record(
    *,
    action: str,
    actor: User | AnonymousUser | None = None,
    desktop: Desktop | None = None,
    source_ip: str | None = None,
    **detail: Any,
) -> AuditEvent:
    """Write one audit row. `detail` must never hold secrets (tickets, passwords)."""
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        action=action, actor=user, desktop=desktop, source_ip=source_ip, detail=detail
    )


def audit_retention_apply() -> dict[str, int]:
    """Remove audit events, and closed console sessions, older than AUDIT_RETENTION_DAYS
    (0: keep everything); record how many of each went in an `audit.retention` event."""
    removed = {"audit_events": 0, "console_sessions": 0}
    days: int = settings.AUDIT_RETENTION_DAYS
    if days == 0:
        return removed
    before = timezone.now() - timedelta(days=days)
    with transaction.atomic():
        removed["audit_events"] = AuditEvent.objects.expire(before=before)
        removed["console_sessions"] = ConsoleSession.objects.expire(before=before)
        if any(removed.values()):  # hourly runs that find nothing leave no trace
            audit_record(
                action="audit.retention",
                retention_days=days,
                removed_before=before.isoformat(),
                audit_events=removed["audit_events"],
                console_sessions=removed["console_sessions"],
            )
    return removed
