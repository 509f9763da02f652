"""Reading libvirt's bulk domain statistics (``getAllDomainStats`` records: flat dicts such
as ``{"cpu.time": 123, "block.0.rd.bytes": 4096, ...}``) into ``DomainStats``.

Plain dict work, no libvirt import: the backend hands each record in, and the bench feeds
records of the shape QEMU's driver returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .types import DomainStats

__all__ = ["domain_stats_from"]

_BLOCK = (
    ("rd.bytes", "block_rd_bytes"),
    ("wr.bytes", "block_wr_bytes"),
    ("rd.reqs", "block_rd_reqs"),
    ("wr.reqs", "block_wr_reqs"),
)
_NET = (
    ("rx.bytes", "net_rx_bytes"),
    ("tx.bytes", "net_tx_bytes"),
    ("rx.pkts", "net_rx_packets"),
    ("tx.pkts", "net_tx_packets"),
)


def domain_stats_from(*, name: str, uuid: str, record: Mapping[str, Any]) -> DomainStats:
    """One domain's record as ``DomainStats``; disks and cards are summed."""
    totals = _summed(record, "block", _BLOCK) | _summed(record, "net", _NET)
    cpu = record.get("cpu.time")
    vcpus = record.get("vcpu.current")
    maximum = record.get("balloon.maximum") or record.get("balloon.current")
    return DomainStats(
        name=name,
        uuid=uuid,
        vcpus=int(vcpus) if vcpus is not None else None,
        cpu_time_ns=int(cpu) if cpu is not None else None,
        memory_used_kib=_memory_used_kib(record),
        memory_max_kib=int(maximum) if maximum is not None else None,
        **totals,
    )


def _summed(
    record: Mapping[str, Any], kind: str, fields: tuple[tuple[str, str], ...]
) -> dict[str, int]:
    count = int(record.get(f"{kind}.count", 0))
    return {
        field: sum(int(record.get(f"{kind}.{i}.{key}", 0)) for i in range(count))
        for key, field in fields
    }


def _memory_used_kib(record: Mapping[str, Any]) -> int | None:
    available, unused = record.get("balloon.available"), record.get("balloon.unused")
    if available is not None and unused is not None:
        return max(int(available) - int(unused), 0)  # the guest's own account
    rss = record.get("balloon.rss")
    return int(rss) if rss is not None else None
