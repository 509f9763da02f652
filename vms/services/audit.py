"""The audit trail: one row for every state change or sensitive action."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from vms.models import AuditEvent, Desktop


def audit_record(
    *,
    action: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    desktop: Desktop | None = None,
    source_ip: str | None = None,
    **detail: Any,
) -> AuditEvent:
    """Write one audit row. `detail` must never hold secrets (tickets, passwords)."""
    user = actor if actor is not None and actor.is_authenticated else None
    return AuditEvent.objects.create(
        action=action, actor=user, desktop=desktop, source_ip=source_ip, detail=detail
    )
