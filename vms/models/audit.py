"""The audit trail: append-only rows (the ORM refuses changes; on PostgreSQL the database
does too, see migration 0002) and the audit event itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, TypeVar

from django.conf import settings
from django.db import models

from vms.models.desktops import Desktop


class AppendOnlyError(Exception):
    """Raised when code tries to delete or rewrite the audit trail (audit events, console
    sessions). Rows are only ever added; retention removes old ones (`expire`)."""


M = TypeVar("M", bound="AppendOnlyModel")


class AppendOnlyQuerySet(models.QuerySet[M]):
    """Refuses delete() and update(); `expire` is the one deliberate way to remove rows."""

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(
            f"{self.model.__name__} rows are append-only and cannot be deleted; "
            "AUDIT_RETENTION_DAYS decides when old rows go"
        )

    delete.queryset_only = True  # type: ignore[attr-defined]  # like Django's: no Manager.delete()

    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only and cannot be changed")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("update_conflicts"):
            raise AppendOnlyError(f"{self.model.__name__} rows are never upserted")
        return super().bulk_create(objs, *args, **kwargs)

    def expire(self, *, before: datetime) -> int:
        """Delete the rows whose retention time (`model.RETENTION_FIELD`) is before `before`;
        return how many. Only the retention service calls this, and only where the database
        has no append-only triggers (SQLite): on PostgreSQL rows go only through the expiry
        table's trigger (migration 0012, `vms.services.core.audit`)."""
        field: str = self.model.RETENTION_FIELD
        return models.QuerySet.delete(self.filter(**{f"{field}__lt": before}))[0]


class AppendOnlyModel(models.Model):
    """A row that is written once: saving an existing row or deleting one is refused."""

    RETENTION_FIELD: ClassVar[str]

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only")
        kwargs["force_insert"] = True  # never an UPDATE of a row with the same id
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only and cannot be deleted")


class AuditEvent(AppendOnlyModel):
    """An append-only record of one state change or sensitive action.

    The users and desktops it names cannot be deleted while it exists (PROTECT): deleting
    them would blank or remove history. Users are deactivated; desktops are soft-deleted.
    """

    RETENTION_FIELD = "created_at"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_events",
    )
    action = models.CharField(max_length=64, db_index=True)
    desktop = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    objects = AppendOnlyQuerySet["AuditEvent"].as_manager()

    class Meta:
        ordering = ["-created_at"]
        base_manager_name = "objects"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"
