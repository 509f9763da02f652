"""Placement: of the hosts that may take a desktop and have room for it, the least loaded.

Room is judged twice: by the admin's caps times the overcommit ratios against what the
portal has allocated (known at once, so quick launches spread), and by the last
heartbeat's sample of what the host really has free (so a host busy with other work, or
with less memory than its caps claim, is spared).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import F, FloatField, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from vms.models import Desktop, DesktopStatus, Host, HostStatus, Template
from vms.models.metrics import DesktopLoad
from vms.services.core.errors import NoHostAvailable
from vms.services.desktops.quotas import NOT_COUNTED
from vms.services.metrics.sampling import desktop_loads_fresh

PARTS = ("vcpus", "memory_mib", "disk_gib")
Sized = Template | Desktop


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
    """`allocation_annotations` per host id, in one query, with `measured_vcpus`: the
    vCPUs the host's desktops really keep busy by the monitoring's latest samples."""
    keys = [f"used_{part}" for part in PARTS]
    rows = Host.objects.annotate(**allocation_annotations(), measured_vcpus=_measured_vcpus())
    return {row.pop("pk"): row for row in rows.values("pk", *keys, "measured_vcpus")}


def _measured_vcpus() -> Coalesce:
    busy = (
        DesktopLoad.objects.filter(desktop_loads_fresh(), host=OuterRef("pk"))
        .values("host")
        .annotate(total=Sum(F("cpu_percent") * F("desktop__vcpus") / 100.0))
        .values("total")
    )
    return Coalesce(Subquery(busy, output_field=FloatField()), 0.0)


def hosts_taking_desktops(*, proven: bool = False) -> QuerySet[Host]:
    """Hosts that may take new desktops: enabled, up, not in maintenance, and not failing
    their last health check; `proven`: with a health check that passed (a desktop moved
    or recovered there must find it working, not merely never checked)."""
    hosts = Host.objects.filter(enabled=True, maintenance=False, status=HostStatus.UP)
    if proven:
        return hosts.filter(last_check_ok=True)
    return hosts.exclude(last_checked_at__isnull=False, last_check_ok=False)


def host_choose(*, template: Template) -> Host:
    """Lock and return the best host for a desktop of `template`.

    Runs inside the creating transaction; the host rows are locked so two launches cannot
    both take the last free slot.
    """
    hosts = list(hosts_taking_desktops().select_for_update().order_by("pk"))
    best = host_least_loaded(hosts, template)
    if best is None:
        raise NoHostAvailable("No host has room for this desktop right now. Try again later.")
    return best


def host_least_loaded(
    hosts: list[Host], sized: Sized, *, used: dict[int, dict[str, int]] | None = None
) -> Host | None:
    """Of `hosts`, the least loaded one that has room for `sized`; None if none has.
    `used`: allocations already read (a caller placing many desktops in one transaction
    reads them once and counts each choice in with `allocation_add`)."""
    used = host_allocations() if used is None else used
    fitting = [host for host in hosts if host_fits(host, used.get(host.pk, {}), sized)]
    if not fitting:
        return None
    return min(fitting, key=lambda host: (host_load_score(host, used.get(host.pk, {})), host.pk))


def host_fits(host: Host, used: dict[str, int], sized: Sized) -> bool:
    """Whether a desktop of `sized`'s size fits: under the caps (times the overcommit
    ratios) and, where the heartbeat has sampled it, in the memory the host has free."""
    return (
        used.get("used_vcpus", 0) + sized.vcpus <= host.capacity_vcpus * host.cpu_overcommit
        and used.get("used_memory_mib", 0) + sized.memory_mib
        <= host.capacity_memory_mib * host.memory_overcommit
        and used.get("used_disk_gib", 0) + sized.disk_gib <= host.capacity_disk_gib
        and _live_memory_fits(host, sized)
    )


def _live_memory_fits(host: Host, sized: Sized) -> bool:
    if host.load_available_memory_mib is None:
        return True  # not sampled yet: the caps alone decide
    reserve: int = settings.HOST_MEMORY_RESERVE_MIB
    return sized.memory_mib + reserve <= host.load_available_memory_mib


def host_load_score(host: Host, used: dict[str, Any]) -> float:
    """How loaded `host` is, 0 (idle) and up: the larger of its allocated shares of vCPUs
    and memory, plus half its sampled CPU use (or its desktops' measured use, see
    `_cpu_share`) and half its sampled memory pressure."""
    vcpus = float(used.get("used_vcpus", 0)) / max(host.capacity_vcpus * host.cpu_overcommit, 1)
    memory = float(used.get("used_memory_mib", 0)) / max(
        host.capacity_memory_mib * host.memory_overcommit, 1
    )
    return max(vcpus, memory) + 0.5 * (_cpu_share(host, used) + _memory_pressure(host))


def _cpu_share(host: Host, used: dict[str, Any]) -> float:
    """The heartbeat's sampled CPU use; before it has one (a first heartbeat, a backend
    without CPU counters), what the monitoring measured its desktops using."""
    if host.load_cpu_percent is not None:
        share = host.load_cpu_percent / 100
    else:
        share = float(used.get("measured_vcpus") or 0.0) / max(
            host.load_cpus or host.capacity_vcpus, 1
        )
    return min(max(share, 0.0), 1.0)


def _memory_pressure(host: Host) -> float:
    if not host.load_memory_mib or host.load_available_memory_mib is None:
        return 0.0
    return min(max(1 - host.load_available_memory_mib / host.load_memory_mib, 0.0), 1.0)


def allocation_add(used: dict[int, dict[str, int]], host: Host, sized: Sized) -> None:
    """Count a desktop of `sized`'s size in `host`'s allocation (see host_least_loaded)."""
    mine = used.setdefault(host.pk, {f"used_{part}": 0 for part in PARTS})
    for part in PARTS:
        mine[f"used_{part}"] = mine.get(f"used_{part}", 0) + getattr(sized, part)
