"""Monitoring: each host's worker samples its running desktops (one bulk statistics call)
and the host itself, turns counters into rates, stores the latest values and the history
(vms.models.metrics), raises and clears alerts, and pushes the new values to open pages.

Rates come from counter deltas between two samples of the same domain on the same host:
the first sample, a restarted domain (a counter went down, or a new domain UUID) and a
desktop that moved hosts have no rates until their next sample. Pages, the API and
/metrics read what is stored here, never libvirt.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Q
from django.utils import timezone

from vms.hypervisor import DomainStats, HostLoad, HypervisorError, PoolUsage
from vms.models import Desktop, DesktopStatus, Host
from vms.models.metrics import (
    AlertKind,
    DesktopLoad,
    DesktopSample,
    HostSample,
    HostUsage,
    MetricAlert,
    Resolution,
)
from vms.services.fleet.hosts import hypervisor_for
from vms.services.metrics.push import metrics_push
from vms.settings_access import metrics_setting, name_prefix

log = logging.getLogger(__name__)

# Counters of DomainStats and the rate each gives (per second; CPU is handled apart).
RATE_OF: dict[str, str] = {
    "block_rd_bytes": "disk_read_bps",
    "block_wr_bytes": "disk_write_bps",
    "block_rd_reqs": "disk_read_iops",
    "block_wr_reqs": "disk_write_iops",
    "net_rx_bytes": "net_rx_bps",
    "net_tx_bytes": "net_tx_bps",
    "net_rx_packets": "net_rx_pps",
    "net_tx_packets": "net_tx_pps",
}
COUNTERS = ("cpu_time_ns", *RATE_OF)


# --- rates -----------------------------------------------------------------------------


def counters_of(stats: DomainStats, *, at: dt.datetime) -> dict[str, Any]:
    """What a sample keeps as the next one's baseline: the counters, the domain's UUID
    and when (epoch seconds)."""
    kept: dict[str, Any] = {name: getattr(stats, name) for name in COUNTERS}
    return kept | {"uuid": stats.uuid, "at": at.timestamp()}


def rates_between(
    *, before: dict[str, Any] | None, after: dict[str, Any], vcpus: int
) -> dict[str, float | None]:
    """Per-second rates (and CPU in percent of `vcpus`) between two baselines of one
    domain; None for each where there is no comparable earlier sample: none at all, a
    different domain (UUID), no time passed, or the counter went down (a restart)."""
    rates: dict[str, float | None] = dict.fromkeys(["cpu_percent", *RATE_OF.values()])
    if not before or before.get("uuid") != after["uuid"]:
        return rates
    elapsed = float(after["at"]) - float(before.get("at", after["at"]))
    if elapsed <= 0:
        return rates
    cpu = _delta(before.get("cpu_time_ns"), after.get("cpu_time_ns"))
    if cpu is not None:
        percent = 100 * cpu / (elapsed * 1e9 * max(vcpus, 1))
        rates["cpu_percent"] = round(min(percent, 100.0), 2)
    for counter, rate in RATE_OF.items():
        delta = _delta(before.get(counter), after.get(counter))
        rates[rate] = None if delta is None else round(delta / elapsed, 2)
    return rates


def _delta(before: Any, after: Any) -> int | None:
    if before is None or after is None or after < before:
        return None
    return int(after) - int(before)


# --- one host's sample -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostReading:
    """What one pass read of the host itself (None where the backend cannot tell)."""

    load: HostLoad | None
    pool: PoolUsage | None


@dataclass(frozen=True, slots=True)
class _Known:
    pk: Any
    vcpus: int
    memory_mib: int


def metrics_sample_host(*, host: Host) -> int:
    """Sample the host's running desktops and the host; store, alert, push. Returns how
    many desktops were measured. Hypervisor errors propagate (the task logs them)."""
    hypervisor = hypervisor_for(host)
    stats = hypervisor.domain_stats(prefix=name_prefix())
    reading = HostReading(
        load=_optional(hypervisor.host_load),
        pool=_optional(lambda: hypervisor.pool_usage(pool=host.storage_pool)),
    )
    return metrics_record(host=host, stats=stats, reading=reading, now=timezone.now())


def _optional(read: Any) -> Any:
    try:
        return read()
    except HypervisorError as exc:
        if not exc.permanent:
            raise
        return None


def metrics_record(
    *, host: Host, stats: list[DomainStats], reading: HostReading, now: dt.datetime
) -> int:
    """Store one pass's findings (the part of a sample after the hypervisor's answer)."""
    known = _desktops_of(stats)
    loads = _desktop_loads(host, [s for s in stats if s.name in known], known, now)
    usage = _host_record(host, reading, running=len(loads), now=now)
    alerts_evaluate(host=host, loads=loads, usage=usage, reading=reading, now=now)
    metrics_push(host=host, loads=loads, usage=usage)
    return len(loads)


def _desktops_of(stats: Iterable[DomainStats]) -> dict[str, _Known]:
    rows = (
        Desktop.objects.filter(domain_name__in=[s.name for s in stats])
        .exclude(status=DesktopStatus.DELETED)
        .values_list("domain_name", "pk", "vcpus", "memory_mib")
    )
    return {name: _Known(pk, vcpus, memory) for name, pk, vcpus, memory in rows}


def _desktop_loads(
    host: Host, stats: list[DomainStats], known: dict[str, _Known], now: dt.datetime
) -> list[DesktopLoad]:
    ids = [known[s.name].pk for s in stats]
    previous = {load.desktop_id: load for load in DesktopLoad.objects.filter(desktop_id__in=ids)}
    loads, samples = [], []
    for item in stats:
        desktop = known[item.name]
        before = previous.get(desktop.pk)
        load, sample = _measure(host, item, desktop, before, now)
        loads.append(load)
        samples.append(sample)
    DesktopLoad.objects.bulk_create(
        loads,
        update_conflicts=True,
        unique_fields=["desktop"],
        update_fields=[
            "host",
            "sampled_at",
            "counters",
            "cpu_percent",
            "memory_mib",
            "cpu_high_since",
        ],
    )
    DesktopSample.objects.bulk_create(samples, ignore_conflicts=True)
    return loads


def _measure(
    host: Host, item: DomainStats, desktop: _Known, before: DesktopLoad | None, now: dt.datetime
) -> tuple[DesktopLoad, DesktopSample]:
    after = counters_of(item, at=now)
    same_host = before is not None and before.host_id == host.pk
    baseline = before.counters if before is not None and same_host else None
    rates = rates_between(before=baseline, after=after, vcpus=item.vcpus or desktop.vcpus)
    memory = None if item.memory_used_kib is None else round(item.memory_used_kib / 1024, 1)
    cpu = rates["cpu_percent"]
    high = cpu is not None and cpu >= metrics_setting("ALERT_DESKTOP_CPU_PERCENT")
    high_since = (before.cpu_high_since if before is not None and same_host else None) or now
    load = DesktopLoad(
        desktop_id=desktop.pk,
        host=host,
        sampled_at=now,
        counters=after,
        cpu_percent=cpu,
        memory_mib=memory,
        cpu_high_since=high_since if high else None,
    )
    elapsed = now.timestamp() - float(baseline["at"]) if baseline else 0.0
    interval = metrics_setting("SAMPLE_INTERVAL_S")
    running_s = elapsed if 0 < elapsed <= 2 * interval else interval
    sample = DesktopSample(
        desktop_id=desktop.pk,
        host=host,
        resolution=Resolution.RAW,
        at=now,
        running_s=round(running_s, 2),
        cpu_percent_max=cpu,
        memory_mib_max=memory,
        memory_mib=memory,
        **rates,
    )
    return load, sample


def _host_record(host: Host, reading: HostReading, *, running: int, now: dt.datetime) -> HostUsage:
    before = HostUsage.objects.filter(pk=host.pk).values_list("counters", flat=True).first()
    load, pool = reading.load, reading.pool
    counters = {"busy_ns": load.cpu_busy_ns, "total_ns": load.cpu_total_ns} if load else {}
    cpu = _host_cpu_percent(before or {}, counters)
    total = None if load is None else float(load.memory_stats_total_mib or load.memory_mib)
    used = None if load is None or total is None else max(total - load.available_memory_mib, 0.0)
    usage, _ = HostUsage.objects.update_or_create(
        host=host,
        defaults={
            "sampled_at": now,
            "counters": counters,
            "cpu_percent": cpu,
            "memory_used_mib": used,
            "memory_total_mib": total,
            "running_desktops": running,
            "pool_capacity_bytes": pool.capacity_bytes if pool else None,
            "pool_allocation_bytes": pool.allocation_bytes if pool else None,
        },
    )
    HostSample.objects.bulk_create(
        [
            HostSample(
                host=host,
                resolution=Resolution.RAW,
                at=now,
                cpu_percent=cpu,
                cpu_percent_max=cpu,
                memory_used_mib=used,
                memory_used_mib_max=used,
                memory_total_mib=total,
                running_desktops=running,
                running_desktops_max=running,
                pool_used_percent=pool_used_percent(pool),
            )
        ],
        ignore_conflicts=True,
    )
    return usage


def _host_cpu_percent(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    busy = _delta(before.get("busy_ns"), after.get("busy_ns"))
    total = _delta(before.get("total_ns"), after.get("total_ns"))
    if busy is None or not total:
        return None
    return round(min(100 * busy / total, 100.0), 2)


def pool_used_percent(pool: PoolUsage | None) -> float | None:
    """How full a storage pool is, in percent (None: no pool, or no size)."""
    if pool is None or pool.capacity_bytes <= 0:
        return None
    return round(100 * pool.allocation_bytes / pool.capacity_bytes, 2)


# --- alerts ----------------------------------------------------------------------------


def alerts_evaluate(
    *,
    host: Host,
    loads: list[DesktopLoad],
    usage: HostUsage,
    reading: HostReading,
    now: dt.datetime,
) -> None:
    """Open the alerts this pass finds (logged), refresh those still true, close (logged)
    those no longer found."""
    found = _conditions(host, loads, usage, reading, now)
    open_alerts = {
        (a.kind, a.desktop_id): a for a in MetricAlert.objects.filter(host=host, ended_at=None)
    }
    new = [
        MetricAlert(
            host=host,
            kind=kind,
            desktop_id=desktop,
            message=message,
            started_at=now,
            last_seen_at=now,
        )
        for (kind, desktop), message in found.items()
        if (kind, desktop) not in open_alerts
    ]
    MetricAlert.objects.bulk_create(new, ignore_conflicts=True)
    for alert in new:
        log.warning("alert on host %s: %s", host.name, alert.message)
    gone = [a for key, a in open_alerts.items() if key not in found]
    still = [a.pk for key, a in open_alerts.items() if key in found]
    MetricAlert.objects.filter(pk__in=still).update(last_seen_at=now)
    MetricAlert.objects.filter(pk__in=[a.pk for a in gone]).update(ended_at=now)
    for alert in gone:
        log.warning("alert cleared on host %s: %s", host.name, alert.message)


def _conditions(
    host: Host, loads: list[DesktopLoad], usage: HostUsage, reading: HostReading, now: dt.datetime
) -> dict[tuple[str, Any], str]:
    found: dict[tuple[str, Any], str] = {}
    cpu_limit, mem_limit = (
        metrics_setting("ALERT_HOST_CPU_PERCENT"),
        metrics_setting("ALERT_HOST_MEMORY_PERCENT"),
    )
    if usage.cpu_percent is not None and usage.cpu_percent >= cpu_limit:
        found[(AlertKind.HOST_CPU, None)] = (
            f"Host {host.name}: CPU at {usage.cpu_percent:.0f} % (threshold {cpu_limit:g} %)"
        )
    if usage.memory_total_mib and usage.memory_used_mib is not None:
        percent = 100 * usage.memory_used_mib / usage.memory_total_mib
        if percent >= mem_limit:
            found[(AlertKind.HOST_MEMORY, None)] = (
                f"Host {host.name}: memory {percent:.0f} % used (threshold {mem_limit:g} %)"
            )
    pool = pool_used_percent(reading.pool)
    if pool is not None and pool >= metrics_setting("ALERT_POOL_PERCENT"):
        found[(AlertKind.POOL_FULL, None)] = (
            f"Host {host.name}: storage pool {host.storage_pool} is {pool:.0f} % full"
        )
    pinned = dt.timedelta(minutes=metrics_setting("ALERT_DESKTOP_CPU_MINUTES"))
    for load in loads:
        if load.cpu_high_since is not None and now - load.cpu_high_since >= pinned:
            minutes = (now - load.cpu_high_since).total_seconds() / 60
            found[(AlertKind.DESKTOP_CPU, load.desktop_id)] = (
                f"Desktop {load.desktop_id} on {host.name}: CPU at full use for "
                f"{minutes:.0f} minutes"
            )
    return found


def alerts_open(*, host: Host | None = None) -> list[MetricAlert]:
    """The alerts that hold now (a host's, or all), newest first."""
    alerts = MetricAlert.objects.filter(ended_at=None).select_related("host", "desktop")
    return list(alerts.filter(host=host) if host is not None else alerts)


# --- rollups and pruning ---------------------------------------------------------------


def metrics_rollup(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Write the 1-minute rows from raw samples and the 1-hour rows from minute rows, from
    the last bucket already written (again: each run replaces it) up to the current one
    included; a first run, or one after the task stood still, goes back as far as the
    finer rows are kept. Then prune rows past their retention. Idempotent. Returns counts."""
    from vms.services.metrics.history import history_prune, history_roll, history_rolled_until

    now = now or timezone.now()
    kept = {
        Resolution.RAW: dt.timedelta(hours=metrics_setting("RAW_RETENTION_H")),
        Resolution.MINUTE: dt.timedelta(days=metrics_setting("MINUTE_RETENTION_DAYS")),
    }
    done = {}
    for model in (DesktopSample, HostSample):
        for source, target in ((Resolution.RAW, Resolution.MINUTE),
                               (Resolution.MINUTE, Resolution.HOUR)):  # fmt: skip
            since = history_rolled_until(model=model, target=target) or now - kept[source]
            done[f"{model.__name__}.{target.name.lower()}"] = history_roll(
                model=model, source=source, target=target, since=max(since, now - kept[source]),
                until=now,
            )  # fmt: skip
    return done | history_prune(now=now)


def desktop_loads_fresh() -> Q:
    """Filter of DesktopLoad rows sampled within two sampling intervals (still live)."""
    age = dt.timedelta(seconds=2 * metrics_setting("SAMPLE_INTERVAL_S") + 5)
    return Q(sampled_at__gte=timezone.now() - age)


__all__ = [
    "HostReading",
    "alerts_evaluate",
    "alerts_open",
    "counters_of",
    "desktop_loads_fresh",
    "metrics_record",
    "metrics_rollup",
    "metrics_sample_host",
    "pool_used_percent",
    "rates_between",
]
