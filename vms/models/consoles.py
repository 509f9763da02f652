"""Console sessions: part of the audit trail, closed once and never changed otherwise."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from vms.models.audit import AppendOnlyError, AppendOnlyModel, AppendOnlyQuerySet
from vms.models.desktops import Desktop


class ConsoleMode(models.TextChoices):
    FULL = "full", "Full control"
    VIEW = "view", "View only"


# What closing a console session writes (vms.services.consoles); nothing else ever changes.
CONSOLE_CLOSE_FIELDS = frozenset(
    {"ended_at", "close_reason", "bytes_to_guest", "bytes_from_guest", "dropped_messages"}
)


class ConsoleSessionQuerySet(AppendOnlyQuerySet["ConsoleSession"]):
    """The one update a session gets: its close, once, while it is open."""

    def update(self, **kwargs: Any) -> int:
        if kwargs.get("ended_at") is None or not set(kwargs) <= CONSOLE_CLOSE_FIELDS:
            raise AppendOnlyError(
                "A console session is only ever closed: an update sets ended_at and nothing "
                f"but {sorted(CONSOLE_CLOSE_FIELDS)}"
            )
        if self.filter(ended_at__isnull=False).exists():
            raise AppendOnlyError("A closed console session cannot be changed")
        # Only open rows, even if one closed since the check above.
        return models.QuerySet.update(self.filter(ended_at__isnull=True), **kwargs)


class ConsoleSession(AppendOnlyModel):
    """One open (or finished) console connection: who, which desktop, how, and how much.

    Written by the relay when it connects and when it closes (the close fields, once); part
    of the audit trail, so append-only like AuditEvent.
    """

    RETENTION_FIELD = "ended_at"  # sessions still open are never removed

    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="console_sessions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="console_sessions"
    )
    mode = models.CharField(max_length=10, choices=ConsoleMode.choices)
    reason = models.TextField(blank=True, default="")
    relay = models.CharField(max_length=20, default="channels")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    bytes_to_guest = models.BigIntegerField(default=0)
    bytes_from_guest = models.BigIntegerField(default=0)
    dropped_messages = models.PositiveIntegerField(default=0)
    close_reason = models.CharField(max_length=200, blank=True, default="")

    objects = ConsoleSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        base_manager_name = "objects"
        indexes = [
            models.Index(fields=["desktop", "ended_at"]),
            models.Index(fields=["user", "ended_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.desktop} ({self.mode})"
