"""Placement: choose the enabled host with the most free memory that fits the desktop."""

from __future__ import annotations

from django.db.models import Q, Sum

from vms.models import Desktop, DesktopStatus, Host, Template
from vms.services.errors import NoHostAvailable
from vms.services.quotas import NOT_COUNTED


def host_allocations() -> dict[int, dict[str, int]]:
    """vCPUs, memory and disk allocated to live desktops, per host id; a desktop that is
    migrating counts on both hosts until it has moved."""
    live = ~Q(desktops__status__in=NOT_COUNTED)
    rows = Host.objects.annotate(
        used_vcpus=Sum("desktops__vcpus", filter=live),
        used_memory_mib=Sum("desktops__memory_mib", filter=live),
        used_disk_gib=Sum("desktops__disk_gib", filter=live),
    ).values("pk", "used_vcpus", "used_memory_mib", "used_disk_gib")
    used = {row.pop("pk"): {k: v or 0 for k, v in row.items()} for row in rows}
    # A second query: two reverse relations summed in one would multiply each other.
    incoming = (
        Desktop.objects.filter(status=DesktopStatus.MIGRATING, migrate_to__isnull=False)
        .values("migrate_to")
        .annotate(vcpus=Sum("vcpus"), memory_mib=Sum("memory_mib"), disk_gib=Sum("disk_gib"))
    )
    for row in incoming:
        totals = used.setdefault(row["migrate_to"], {})
        for part in ("vcpus", "memory_mib", "disk_gib"):
            totals[f"used_{part}"] = totals.get(f"used_{part}", 0) + row[part]
    return used


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
