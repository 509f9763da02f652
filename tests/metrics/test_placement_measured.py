"""Placement uses the desktops' measured CPU where the heartbeat has no CPU figure yet,
and keeps the heartbeat's figure where it has one."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics.helpers import record, stats_for
from vms.models import Host
from vms.services.fleet.placement import host_allocations, host_least_loaded

pytestmark = pytest.mark.django_db


def test_measured_desktop_load_steers_placement(fake_template, employee):
    busy, idle = (Host.objects.create(name=n, uri="test:///default") for n in ("busy", "idle"))
    hot = make_desktop(employee, fake_template, host=busy, domain_name="dpm-hot", vcpus=2)
    cool = make_desktop(employee, fake_template, host=idle, domain_name="dpm-cool", vcpus=2)
    now = timezone.now()
    for i, at in enumerate((now - dt.timedelta(seconds=15), now)):
        record(busy, at, stats_for(hot, cpu_s=30 * i))  # both vCPUs flat out
        record(idle, at, stats_for(cool, cpu_s=0.3 * i))
    used = host_allocations()
    assert used[busy.pk]["measured_vcpus"] == pytest.approx(2.0)
    assert used[idle.pk]["measured_vcpus"] == pytest.approx(0.02)
    hosts = list(Host.objects.filter(pk__in=[busy.pk, idle.pk]).order_by("pk"))
    assert host_least_loaded(hosts, fake_template) == idle
    Host.objects.filter(pk=busy.pk).update(load_cpu_percent=1.0)  # the heartbeat knows better
    Host.objects.filter(pk=idle.pk).update(load_cpu_percent=90.0)
    hosts = list(Host.objects.filter(pk__in=[busy.pk, idle.pk]).order_by("pk"))
    assert host_least_loaded(hosts, fake_template) == busy
