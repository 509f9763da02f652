"""Building monitoring rows for tests: DomainStats as the hypervisor layer returns them
(the seam's own dataclass; no libvirt object is imitated) and one recorded pass."""

from __future__ import annotations

import datetime as dt
from typing import Any

from vms.hypervisor import DomainStats, HostLoad, PoolUsage
from vms.models import Desktop, Host
from vms.services.metrics.sampling import HostReading, metrics_record


def stats_for(desktop: Desktop, *, cpu_s: float, uuid: str = "u-1", **more: Any) -> DomainStats:
    """One domain's counters: `cpu_s` seconds of CPU so far, the rest from `more`."""
    values: dict[str, Any] = {"memory_used_kib": 200 * 1024, "memory_max_kib": 256 * 1024}
    values |= more
    return DomainStats(name=desktop.domain_name, uuid=uuid, vcpus=desktop.vcpus,
                       cpu_time_ns=int(cpu_s * 1e9), **values)  # fmt: skip


def host_reading(*, busy_s: float = 0, total_s: float = 0, pool_used: float = 0.5) -> HostReading:
    load = HostLoad(cpus=2, memory_mib=4096, available_memory_mib=1024, running_guests=1,
                    cpu_busy_ns=int(busy_s * 1e9), cpu_total_ns=int(total_s * 1e9))  # fmt: skip
    pool = PoolUsage(capacity_bytes=100 * 2**30, allocation_bytes=int(pool_used * 100 * 2**30),
                     available_bytes=int((1 - pool_used) * 100 * 2**30))  # fmt: skip
    return HostReading(load=load, pool=pool)


def record(host: Host, at: dt.datetime, *stats: DomainStats, **reading: Any) -> int:
    return metrics_record(host=host, stats=list(stats), reading=host_reading(**reading), now=at)
