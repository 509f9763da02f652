"""Placement: choose the enabled host with the most free memory that fits the desktop."""

from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce

from vms.models import Desktop, DesktopStatus, Host, Template
from vms.services.errors import NoHostAvailable
from vms.services.quotas import NOT_COUNTED

PARTS = ("vcpus", "memory_mib", "disk_gib")


def allocation_annotations() -> dict[str, Any]:
    """Host annotations `used_vcpus`, `used_memory_mib` and `used_disk_gib`: what live
    desktops hold on each host, a migrating desktop counting on both hosts until it has
    moved (for placement, the admin's host list and the API alike)."""
    live = ~Q(desktops__status__in=NOT_COUNTED)
    return {
        f"used_{part}": Coalesce(Sum(f"desktops__{part}", filter=live), 0) + _incoming(part)
        for part in PARTS
    }


def _incoming(part: str) -> Coalesce:
    # A subquery: two reverse relations summed in one query would multiply each other.
    arriving = (
        Desktop.objects.filter(status=DesktopStatus.MIGRATING, migrate_to=OuterRef("pk"))
        .values("migrate_to")
        .annotate(total=Sum(part))
        .values("total")
    )
    return Coalesce(Subquery(arriving), 0)


def host_allocations() -> dict[int, dict[str, int]]:
    """`allocation_annotations` per host id, in one query."""
    keys = [f"used_{part}" for part in PARTS]
    rows = Host.objects.annotate(**allocation_annotations()).values("pk", *keys)
    return {row.pop("pk"): row for row in rows}


def host_choose(*, template: Template) -> Host:
    """Lock and return the best host for a desktop of `template`.

    Runs inside the creating transaction; the host rows are locked so two launches cannot
    both take the last free slot.
    """
    hosts = list(Host.objects.select_for_update().filter(enabled=True).order_by("pk"))
    used = host_allocations()
    fitting = [host for host in hosts if _fits(host, used.get(host.pk, {}), template)]
    if not fitting:
        raise NoHostAvailable("No host has room for this desktop right now. Try again later.")
    return max(fitting, key=lambda h: h.capacity_memory_mib - used[h.pk]["used_memory_mib"])


def host_fits(host: Host, used: dict[str, int], template: Template | Desktop) -> bool:
    """Whether a desktop of `template`'s size (or `template` itself, a desktop) fits."""
    return _fits(host, used, template)


def _fits(host: Host, used: dict[str, int], template: Template | Desktop) -> bool:
    return (
        used.get("used_vcpus", 0) + template.vcpus <= host.capacity_vcpus
        and used.get("used_memory_mib", 0) + template.memory_mib <= host.capacity_memory_mib
        and used.get("used_disk_gib", 0) + template.disk_gib <= host.capacity_disk_gib
    )
