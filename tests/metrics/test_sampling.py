"""Rates from counters, one pass's rows, alerts, and the history's rollups and pruning,
on PostgreSQL (the hypervisor's answers are given as the seam's own DomainStats)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db.models import F
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics.helpers import record, stats_for
from vms.models import Host
from vms.models.metrics import (
    AlertKind,
    DesktopLoad,
    DesktopSample,
    HostSample,
    HostUsage,
    MetricAlert,
    Resolution,
)
from vms.services.metrics.sampling import metrics_rollup, rates_between

pytestmark = pytest.mark.django_db
T0 = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=dt.UTC)


def test_rates_need_a_comparable_earlier_sample() -> None:
    after = {"uuid": "a", "at": 115.0, "cpu_time_ns": 30 * 10**9, "block_rd_bytes": 3000}
    assert rates_between(before=None, after=after, vcpus=2)["cpu_percent"] is None
    before = {"uuid": "a", "at": 100.0, "cpu_time_ns": 15 * 10**9, "block_rd_bytes": 0}
    rates = rates_between(before=before, after=after, vcpus=2)
    assert rates["cpu_percent"] == 50.0  # 15 s of CPU in 15 s on 2 vCPUs
    assert rates["disk_read_bps"] == 200.0
    assert rates["net_rx_bps"] is None  # no such counter before
    restarted = before | {"cpu_time_ns": 40 * 10**9}
    assert rates_between(before=restarted, after=after, vcpus=2)["cpu_percent"] is None
    other_domain = before | {"uuid": "b"}
    assert rates_between(before=other_domain, after=after, vcpus=2)["disk_read_bps"] is None


def test_two_passes_give_rates_and_a_move_starts_afresh(fake_host, fake_template, employee):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-one", vcpus=1)
    assert record(fake_host, T0, stats_for(desktop, cpu_s=10, block_wr_bytes=0)) == 1
    load = DesktopLoad.objects.get(desktop=desktop)
    assert load.cpu_percent is None and load.memory_mib == 200.0  # first sample
    record(fake_host, T0 + dt.timedelta(seconds=15),
           stats_for(desktop, cpu_s=13, block_wr_bytes=15 * 4096))  # fmt: skip
    load.refresh_from_db()
    assert load.cpu_percent == 20.0
    raw = DesktopSample.objects.filter(desktop=desktop).order_by("at")
    assert [s.cpu_percent for s in raw] == [None, 20.0]
    assert raw.last().disk_write_bps == 4096.0
    other = Host.objects.create(name="other", uri="test:///default")
    record(other, T0 + dt.timedelta(seconds=30), stats_for(desktop, cpu_s=14))
    load.refresh_from_db()
    assert load.host == other and load.cpu_percent is None  # moved: no rate across hosts


def test_unknown_domains_are_not_measured(fake_host, fake_template, employee):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-known")
    stranger = make_desktop(employee, fake_template, domain_name="dpm-gone", status="deleted")
    assert record(fake_host, T0, stats_for(desktop, cpu_s=1), stats_for(stranger, cpu_s=1)) == 1


def test_host_usage_and_its_alerts_open_and_close(fake_host, fake_template, employee):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-busy")
    record(fake_host, T0, stats_for(desktop, cpu_s=0), busy_s=0, total_s=0, pool_used=0.95)
    minutes = 0
    for minutes in range(1, 12):  # pinned at full CPU for 11 minutes, host CPU at 95 %
        at = T0 + dt.timedelta(minutes=minutes)
        record(fake_host, at, stats_for(desktop, cpu_s=60 * minutes),
               busy_s=95 * minutes, total_s=100 * minutes, pool_used=0.95)  # fmt: skip
    usage = HostUsage.objects.get(host=fake_host)
    assert usage.cpu_percent == 95.0 and usage.memory_used_mib == 3072
    kinds = set(MetricAlert.objects.filter(ended_at=None).values_list("kind", flat=True))
    assert kinds == {AlertKind.HOST_CPU, AlertKind.POOL_FULL, AlertKind.DESKTOP_CPU}
    pinned = MetricAlert.objects.get(kind=AlertKind.DESKTOP_CPU)
    assert pinned.desktop == desktop and pinned.started_at == T0 + dt.timedelta(
        minutes=11
    )  # high since minute 1
    at = T0 + dt.timedelta(minutes=minutes + 1)
    record(fake_host, at, stats_for(desktop, cpu_s=60 * minutes), busy_s=95 * minutes + 1,
           total_s=100 * minutes + 60, pool_used=0.5)  # fmt: skip
    assert not MetricAlert.objects.filter(ended_at=None).exists()
    assert MetricAlert.objects.filter(ended_at=at).count() == 3


def test_rollups_keep_means_and_maxima_and_pruning_keeps_its_promise(
    fake_host, fake_template, employee
):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-roll")
    start = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=3)
    cpu_s = 0.0
    for i in range(8):  # every 15 s for two minutes: 10 % then 50 % CPU
        cpu_s += 1.5 if i < 4 else 7.5
        record(fake_host, start + dt.timedelta(seconds=15 * i), stats_for(desktop, cpu_s=cpu_s))
    metrics_rollup()
    minutes = DesktopSample.objects.filter(desktop=desktop, resolution=Resolution.MINUTE)
    first, second = minutes.order_by("at")
    assert first.at == start and first.cpu_percent == 10.0  # the first sample has no rate
    assert first.running_s == pytest.approx(60)
    assert second.cpu_percent == 50.0 and second.cpu_percent_max == 50.0
    hour = DesktopSample.objects.get(desktop=desktop, resolution=Resolution.HOUR)
    assert hour.cpu_percent == 30.0 and hour.cpu_percent_max == 50.0
    assert hour.running_s == pytest.approx(120)
    assert HostSample.objects.filter(host=fake_host, resolution=Resolution.MINUTE).count() == 2
    assert metrics_rollup()["DesktopSample.minute"] == 1  # again: the last bucket, replaced
    assert minutes.count() == 2

    minutes.update(at=F("at") - dt.timedelta(days=8))
    raw = DesktopSample.objects.filter(resolution=Resolution.RAW)
    raw.update(at=F("at") - dt.timedelta(hours=25))
    pruned = metrics_rollup()
    assert pruned["pruned DesktopSample.raw"] == 8
    assert pruned["pruned DesktopSample.minute"] == 2
    assert DesktopSample.objects.filter(resolution=Resolution.HOUR).count() == 1


def test_a_backlog_is_rolled_up_whole(fake_host, fake_template, employee):
    """After the rollup task stood still (or on its first run), every raw sample still
    kept is rolled up, not only the last few minutes."""
    desktop = make_desktop(employee, fake_template, domain_name="dpm-backlog")
    start = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=40)
    for i in range(4 * 30):  # half an hour, every 15 s
        record(fake_host, start + dt.timedelta(seconds=15 * i), stats_for(desktop, cpu_s=1.5 * i))
    metrics_rollup()
    minutes = DesktopSample.objects.filter(desktop=desktop, resolution=Resolution.MINUTE)
    assert minutes.count() == 30
    hours = DesktopSample.objects.filter(desktop=desktop, resolution=Resolution.HOUR)
    assert sum(h.running_s for h in hours) == pytest.approx(30 * 60)
