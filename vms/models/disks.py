"""A desktop's disk over time: snapshots, backups and restores."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from vms.models.desktops import Desktop


class SnapshotStatus(models.TextChoices):
    """A snapshot's state; the moves are vms.services.disks.snapshots.SNAPSHOT_TRANSITIONS."""

    CREATING = "creating"
    READY = "ready"
    REVERTING = "reverting"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


class Snapshot(models.Model):
    """An internal snapshot of a desktop's qcow2 disk (libvirt's snapshot API).

    `with_memory` when taken of a running guest (a revert resumes it); else taken of a
    stopped desktop (a revert leaves it stopped). `size_bytes` is measured from the image:
    how much the desktop's volume grew when the snapshot was taken (its saved memory and
    metadata), plus what later writes have copied since; it counts toward the disk quota.
    The `reason` and `requested_by` of the last revert are kept for the help-desk rule.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="snapshots")
    name = models.CharField(max_length=100)
    libvirt_name = models.CharField(max_length=60)
    status = models.CharField(
        max_length=12, choices=SnapshotStatus.choices, default=SnapshotStatus.CREATING
    )
    with_memory = models.BooleanField(default=False)
    size_bytes = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.name} of {self.desktop_id}"


class BackupStatus(models.TextChoices):
    """A backup's state; the moves are vms.services.disks.backups.BACKUP_TRANSITIONS. Only
    `ready` backups are listed to people and restorable."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Backup(models.Model):
    """One backup of a desktop's disk: a qcow2 file in BACKUP_DIR, full or incremental.

    An incremental backup's file holds only the clusters changed since `parent` and names
    the parent's file as its backing file, so the newest file of a chain reads as the whole
    disk. It is written under a temporary name and renamed when it is complete and verified;
    `file_name` is set only then. `checkpoint` is the libvirt checkpoint it made, which the
    next incremental backup starts from. Restores from it are `Restore` rows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="backups")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    status = models.CharField(
        max_length=12, choices=BackupStatus.choices, default=BackupStatus.QUEUED
    )
    checkpoint = models.CharField(max_length=60, blank=True, default="")
    file_name = models.CharField(max_length=200, blank=True, default="")
    bytes_written = models.BigIntegerField(default=0)
    virtual_bytes = models.BigIntegerField(default=0)
    progress = models.PositiveSmallIntegerField(default=0)
    scheduled = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["desktop", "status"])]

    def __str__(self) -> str:
        return f"backup {self.pk} of {self.desktop_id}"

    @property
    def incremental(self) -> bool:
        return self.parent_id is not None


class RestoreTarget(models.TextChoices):
    NEW = "new", "a new desktop"
    IN_PLACE = "in_place", "in place"


class RestoreStatus(models.TextChoices):
    """A restore's state; the moves are vms.services.disks.backups.RESTORE_TRANSITIONS."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Restore(models.Model):
    """One restore of `backup` into `desktop`: a new desktop provisioned from the backup, or
    the backup's own desktop whose disk is replaced (in place).

    The backup's chain is copied into volume `volume_name` by a block job on the desktop's
    host (`job_name`, a paused helper domain: measured into `progress`, cancellable). An
    in-place restore copies next to the old disk and swaps only when the copy is whole and
    checked, so a failed or cancelled one leaves the desktop as it was.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    backup = models.ForeignKey(Backup, on_delete=models.PROTECT, related_name="restores")
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="restores")
    target = models.CharField(max_length=10, choices=RestoreTarget.choices)
    status = models.CharField(
        max_length=12, choices=RestoreStatus.choices, default=RestoreStatus.QUEUED
    )
    progress = models.PositiveSmallIntegerField(default=0)
    volume_name = models.CharField(max_length=120)
    job_name = models.CharField(max_length=120)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["desktop", "status"])]

    def __str__(self) -> str:
        return f"restore {self.pk} of {self.backup_id} into {self.desktop_id}"
