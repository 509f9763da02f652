"""Monitoring history: rolling finer rows up into 1-minute and 1-hour rows (means and
maxima), pruning rows past their retention, and reading the series the charts draw."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Avg, Max, Model, Sum
from django.db.models.functions import Trunc

from vms.models.metrics import DesktopSample, HostSample, MetricAlert, Resolution
from vms.settings_access import metrics_setting

# Fields averaged (and, for those with a `_max` twin, maximised) in each kind of row.
MEANS: dict[type[Model], tuple[str, ...]] = {
    DesktopSample: (
        "cpu_percent",
        "memory_mib",
        "disk_read_bps",
        "disk_write_bps",
        "disk_read_iops",
        "disk_write_iops",
        "net_rx_bps",
        "net_tx_bps",
        "net_rx_pps",
        "net_tx_pps",
    ),
    HostSample: (
        "cpu_percent",
        "memory_used_mib",
        "memory_total_mib",
        "running_desktops",
        "pool_used_percent",
    ),
}
MAXIMA: dict[type[Model], tuple[str, ...]] = {
    DesktopSample: ("cpu_percent", "memory_mib"),
    HostSample: ("cpu_percent", "memory_used_mib", "running_desktops"),
}
OWNER: dict[type[Model], str] = {DesktopSample: "desktop_id", HostSample: "host_id"}
_TRUNC = {Resolution.MINUTE: "minute", Resolution.HOUR: "hour"}


def history_roll(
    *,
    model: type[Model],
    source: Resolution,
    target: Resolution,
    since: dt.datetime,
    until: dt.datetime,
) -> int:
    """Write `target` rows (means, maxima and running time) of the `source` rows in the
    buckets from `since`'s to `until`'s, replacing rows already there. Returns how many."""
    start = _floor(since, target)
    owner = OWNER[model]
    aggregates: dict[str, Any] = {name: Avg(name) for name in MEANS[model]}
    aggregates |= {f"{name}_max": Max(f"{name}_max") for name in MAXIMA[model]}
    if model is DesktopSample:
        aggregates |= {"running_s": Sum("running_s"), "host_id": Max("host_id")}
    rows = (
        model.objects.filter(resolution=source, at__gte=start, at__lte=until)  # type: ignore[attr-defined]
        .annotate(bucket=Trunc("at", _TRUNC[target], tzinfo=dt.UTC))
        .values(owner, "bucket")
        .annotate(**aggregates)
    )
    made = [
        model(resolution=target, at=row.pop("bucket"), **{k: _round(v) for k, v in row.items()})
        for row in rows
    ]
    fields = [*aggregates]
    model.objects.bulk_create(  # type: ignore[attr-defined]
        made,
        update_conflicts=True,
        unique_fields=[owner.removesuffix("_id"), "resolution", "at"],
        update_fields=[f.removesuffix("_id") if f == "host_id" else f for f in fields],
    )
    return len(made)


def history_rolled_until(*, model: type[Model], target: Resolution) -> dt.datetime | None:
    """The latest `target` bucket written so far (None: none yet)."""
    latest: dt.datetime | None = model.objects.filter(resolution=target).aggregate(  # type: ignore[attr-defined]
        at=Max("at")
    )["at"]
    return latest


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def _floor(moment: dt.datetime, resolution: Resolution) -> dt.datetime:
    seconds = int(moment.timestamp()) // resolution.value * resolution.value
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def history_prune(*, now: dt.datetime) -> dict[str, int]:
    """Delete history rows past their retention (METRICS_*_RETENTION_*) and alerts closed
    longer ago than the hourly rows are kept. Returns how many of each went."""
    keep = {
        Resolution.RAW: dt.timedelta(hours=metrics_setting("RAW_RETENTION_H")),
        Resolution.MINUTE: dt.timedelta(days=metrics_setting("MINUTE_RETENTION_DAYS")),
        Resolution.HOUR: dt.timedelta(days=metrics_setting("HOUR_RETENTION_DAYS")),
    }
    pruned = {}
    for model in (DesktopSample, HostSample):
        for resolution, age in keep.items():
            old = model.objects.filter(resolution=resolution, at__lt=now - age)
            pruned[f"pruned {model.__name__}.{resolution.name.lower()}"] = old._raw_delete(old.db)
    closed = MetricAlert.objects.filter(ended_at__lt=now - keep[Resolution.HOUR])
    pruned["pruned alerts"] = closed._raw_delete(closed.db)
    return pruned


# --- series for the charts -------------------------------------------------------------

# ?period= of the metrics API: how far back, and which rows draw it.
PERIODS: dict[str, tuple[dt.timedelta, Resolution]] = {
    "1h": (dt.timedelta(hours=1), Resolution.RAW),
    "24h": (dt.timedelta(hours=24), Resolution.MINUTE),
    "7d": (dt.timedelta(days=7), Resolution.HOUR),
}
DESKTOP_SERIES = (
    "cpu_percent",
    "cpu_percent_max",
    "memory_mib",
    "memory_mib_max",
    "disk_read_bps",
    "disk_write_bps",
    "net_rx_bps",
    "net_tx_bps",
)
HOST_SERIES = (
    "cpu_percent",
    "cpu_percent_max",
    "memory_used_mib",
    "memory_used_mib_max",
    "memory_total_mib",
    "running_desktops",
    "running_desktops_max",
    "pool_used_percent",
)


def history_series(
    *, model: type[Model], owner_id: Any, period: str, now: dt.datetime
) -> dict[str, Any]:
    """One desktop's or host's history over `period` (a key of PERIODS), as columns:
    `t` (epoch seconds) and one list per field, oldest first (what uPlot draws)."""
    span, resolution = PERIODS[period]
    names = DESKTOP_SERIES if model is DesktopSample else HOST_SERIES
    rows = (
        model.objects.filter(  # type: ignore[attr-defined]
            **{OWNER[model]: owner_id}, resolution=resolution, at__gte=now - span
        )
        .order_by("at")
        .values_list("at", *names)
    )
    columns: dict[str, list[Any]] = {"t": [], **{name: [] for name in names}}
    for at, *values in rows:
        columns["t"].append(int(at.timestamp()))
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
    return {
        "period": period,
        "resolution_s": resolution.value or metrics_setting("SAMPLE_INTERVAL_S"),
        "series": columns,
    }
