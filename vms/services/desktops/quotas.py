"""Quotas: the effective limits of a user, what they use, and the launch check.

Effective quota (documented in README "Quotas"): the user's own Quota row if there is
one; otherwise, limit by limit, the most generous value among the quotas of the user's
groups; otherwise settings.DEFAULT_QUOTA.

The disk limit counts everything a user stores: their desktops' disks, their snapshots'
measured space and their backups (ready ones by the bytes written, those under way by
their desktop's whole disk until they are measured), the backups of deleted desktops
included while they are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count, Max, Sum

from vms.models import Backup, BackupStatus, Desktop, DesktopStatus, Quota, Snapshot, Template
from vms.services.core.errors import QuotaExceeded

LIMIT_NAMES = {
    "max_desktops": "desktops",
    "max_vcpus": "vCPUs",
    "max_memory_mib": "memory (MiB)",
    "max_disk_gib": "disk (GiB)",
}
# Desktops in these states hold no resources and do not count against the quota.
NOT_COUNTED = (DesktopStatus.DELETED, DesktopStatus.ERROR)
BACKUPS_UNDER_WAY = (BackupStatus.QUEUED, BackupStatus.RUNNING, BackupStatus.CANCELLING)
GIB = 1024**3
LIVE_SNAPSHOTS = ("creating", "ready", "reverting", "deleting", "error")


@dataclass(frozen=True)
class Limits:
    """A set of the four quota dimensions (used both for limits and for usage)."""

    max_desktops: int
    max_vcpus: int
    max_memory_mib: int
    max_disk_gib: int


def effective_quota(*, user: User) -> Limits:
    """The limits that apply to `user` (see the module docstring)."""
    own = Quota.objects.filter(user=user).first()
    if own is not None:
        return Limits(own.max_desktops, own.max_vcpus, own.max_memory_mib, own.max_disk_gib)
    best = Quota.objects.filter(group__user=user).aggregate(
        **{field: Max(field) for field in LIMIT_NAMES}
    )
    if best["max_desktops"] is not None:
        return Limits(**best)
    return Limits(**settings.DEFAULT_QUOTA)


def usage(*, user: User) -> Limits:
    """What the user's desktops hold now, in the same four dimensions."""
    totals = (
        Desktop.objects.filter(owner=user)
        .exclude(status__in=NOT_COUNTED)
        .aggregate(
            max_desktops=Count("pk"),
            max_vcpus=Sum("vcpus"),
            max_memory_mib=Sum("memory_mib"),
            max_disk_gib=Sum("disk_gib"),
        )
    )
    used = {key: value or 0 for key, value in totals.items()}
    # Snapshots' and backups' space counts toward the disk limit (whole GiB, rounded up).
    stored = snapshot_bytes_of(owner_id=user.pk) + backup_bytes_of(owner_id=user.pk)
    used["max_disk_gib"] += -(-stored // GIB)
    return Limits(**used)


def backup_bytes_of(*, owner_id: int) -> int:
    """The space of a user's backups: ready ones (also of deleted desktops, until they
    expire) by the bytes written; one under way by its desktop's whole disk, the most it
    can write, until it is ready and measured."""
    mine = Backup.objects.filter(desktop__owner_id=owner_id)
    ready = mine.filter(status=BackupStatus.READY).aggregate(total=Sum("bytes_written"))
    going = mine.filter(status__in=BACKUPS_UNDER_WAY).aggregate(total=Sum("desktop__disk_gib"))
    return int(ready["total"] or 0) + int(going["total"] or 0) * GIB


def snapshot_bytes_of(*, owner_id: int) -> int:
    """The measured space of a user's snapshots that still exist."""
    rows = Snapshot.objects.filter(desktop__owner_id=owner_id, status__in=LIVE_SNAPSHOTS).exclude(
        desktop__status__in=NOT_COUNTED
    )
    total = rows.aggregate(total=Sum("size_bytes"))["total"]
    return int(total or 0)


class Footprint(Protocol):
    """What one desktop takes from a quota: a template's sizes, or a desktop's own."""

    vcpus: int
    memory_mib: int
    disk_gib: int


def first_exceeded(*, limits: Limits, used: Limits, template: Footprint) -> QuotaExceeded | None:
    """The first limit one more desktop of `template` would break, or None."""
    wanted = {
        "max_desktops": used.max_desktops + 1,
        "max_vcpus": used.max_vcpus + template.vcpus,
        "max_memory_mib": used.max_memory_mib + template.memory_mib,
        "max_disk_gib": used.max_disk_gib + template.disk_gib,
    }
    for field, requested in wanted.items():
        allowed = getattr(limits, field)
        if requested > allowed:
            return QuotaExceeded(limit=LIMIT_NAMES[field], allowed=allowed, requested=requested)
    return None


def quota_check(*, user: User, template: Template) -> None:
    """Raise QuotaExceeded if one more desktop of `template` is over the user's quota.

    Call it inside the transaction that inserts the desktop, after locking the user row.
    """
    refusal = first_exceeded(
        limits=effective_quota(user=user), used=usage(user=user), template=template
    )
    if refusal is not None:
        raise refusal


def quota_check_back(*, desktop: Desktop) -> None:
    """Raise QuotaExceeded if `desktop`, which does not count now (in `error`), would no
    longer fit its owner's quota once it counts again (with its snapshots): a desktop
    that left the quota comes back only through the check a launch passes. Call it after
    locking the owner's row, in the transaction that moves the desktop."""
    owner = desktop.owner
    own = Snapshot.objects.filter(desktop=desktop, status__in=LIVE_SNAPSHOTS)
    held = int(own.aggregate(total=Sum("size_bytes"))["total"] or 0)
    used = usage(user=owner)
    used = replace(used, max_disk_gib=used.max_disk_gib + -(-held // GIB))
    refusal = first_exceeded(limits=effective_quota(user=owner), used=used, template=desktop)
    if refusal is not None:
        raise refusal
