"""Usage reports for admins: desktop-hours, console-hours and peak resources per user,
group or template over a period, from the hourly monitoring rows (desktop-hours: how long
each desktop was seen running; peaks: the largest 1-minute maxima) and the console
session audit rows (console-hours: each session's time inside the period). Both count for
the desktop's owner, its owner's groups and its template, whoever opened the console."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Max, Q, Sum
from django.utils import timezone

from vms.models import ConsoleSession, Desktop
from vms.models.metrics import DesktopSample, Resolution

GROUPINGS = {"user": "User", "group": "Group", "template": "Template"}
NO_GROUP = "(no group)"


@dataclass(slots=True)
class UsageRow:
    """One user's, group's or template's use of desktops in the period."""

    key: str
    desktops: set[Any] = field(default_factory=set)
    desktop_hours: float = 0.0
    console_hours: float = 0.0
    peak_cpu_percent: float | None = None
    peak_memory_mib: float | None = None

    def add(self, desktop: Any, use: dict[str, Any]) -> None:
        self.desktops.add(desktop)
        self.desktop_hours += use.get("running_s", 0.0) / 3600
        self.console_hours += use.get("console_s", 0.0) / 3600
        self.peak_cpu_percent = _max(self.peak_cpu_percent, use.get("cpu"))
        self.peak_memory_mib = _max(self.peak_memory_mib, use.get("memory"))


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def usage_report(*, start: dt.datetime, end: dt.datetime, by: str) -> list[UsageRow]:
    """Rows per `by` (a key of GROUPINGS), busiest first, for [start, end)."""
    per_desktop = _desktop_use(start, end)
    for desktop_id, seconds in _console_seconds(start, end).items():
        per_desktop[desktop_id]["console_s"] = seconds
    rows: dict[str, UsageRow] = {}
    for desktop_id, keys in _keys(per_desktop, by).items():
        for key in keys:
            rows.setdefault(key, UsageRow(key)).add(desktop_id, per_desktop[desktop_id])
    return sorted(rows.values(), key=lambda r: (-r.desktop_hours, -r.console_hours, r.key))


def _desktop_use(start: dt.datetime, end: dt.datetime) -> dict[Any, dict[str, Any]]:
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    rows = (
        DesktopSample.objects.filter(resolution=Resolution.HOUR, at__gte=first_hour, at__lt=end)
        .values("desktop_id")
        .annotate(running_s=Sum("running_s"), cpu=Max("cpu_percent_max"),
                  memory=Max("memory_mib_max"))
    )  # fmt: skip
    use: dict[Any, dict[str, Any]] = defaultdict(dict)
    for row in rows:
        use[row.pop("desktop_id")].update(row)
    return use


def _console_seconds(start: dt.datetime, end: dt.datetime) -> dict[Any, float]:
    now = timezone.now()
    sessions = ConsoleSession.objects.filter(
        Q(ended_at__isnull=True) | Q(ended_at__gt=start), started_at__lt=end
    ).values_list("desktop_id", "started_at", "ended_at")
    seconds: dict[Any, float] = defaultdict(float)
    for desktop_id, started, ended in sessions:
        inside = min(ended or now, end, now) - max(started, start)
        seconds[desktop_id] += max(inside.total_seconds(), 0.0)
    return seconds


def _keys(per_desktop: dict[Any, Any], by: str) -> dict[Any, list[str]]:
    desktops = Desktop.objects.filter(pk__in=list(per_desktop)).values_list(
        "pk", "owner__username", "template__name", "owner_id"
    )
    if by == "user":
        return {pk: [owner] for pk, owner, _t, _o in desktops}
    if by == "template":
        return {pk: [template] for pk, _u, template, _o in desktops}
    rows = list(desktops)
    groups = _groups_of({owner_id for *_rest, owner_id in rows})
    return {pk: groups.get(owner_id) or [NO_GROUP] for pk, _u, _t, owner_id in rows}


def _groups_of(user_ids: Iterable[int]) -> dict[int, list[str]]:
    through = User.groups.through
    found: dict[int, list[str]] = defaultdict(list)
    for user_id, name in through.objects.filter(user_id__in=list(user_ids)).values_list(
        "user_id", "group__name"
    ):
        found[user_id].append(name)
    return found


CSV_COLUMNS = ("desktops", "desktop_hours", "console_hours", "peak_cpu_percent",
               "peak_memory_mib")  # fmt: skip


def usage_csv(rows: list[UsageRow], *, by: str) -> str:
    """The report as CSV; a name a spreadsheet would run as a formula is quoted with '."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([by, *CSV_COLUMNS])
    for row in rows:
        key = f"'{row.key}" if row.key[:1] in ("=", "+", "-", "@", "\t", "\r") else row.key
        writer.writerow([key, len(row.desktops), f"{row.desktop_hours:.2f}",
                         f"{row.console_hours:.2f}", _fmt(row.peak_cpu_percent),
                         _fmt(row.peak_memory_mib)])  # fmt: skip
    return out.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"
