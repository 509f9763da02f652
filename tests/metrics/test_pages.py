"""The monitoring on pages: the admin's host page (charts, capacity, alerts, desktops), the
usage report and its CSV, and the chart boxes on the owner's and help-desk's cards."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics.helpers import record, stats_for
from vms.models import ConsoleSession
from vms.services.metrics.sampling import metrics_rollup

pytestmark = pytest.mark.django_db


@pytest.fixture
def busy_week(fake_host, fake_template, employee, other_employee):
    """Two desktops measured for two minutes; one with a 30-minute console session."""
    mine = make_desktop(employee, fake_template, domain_name="dpm-a", name="=cmd|calc")
    theirs = make_desktop(other_employee, fake_template, domain_name="dpm-b")
    employee.groups.add(Group.objects.create(name="finance"))
    start = timezone.now() - dt.timedelta(minutes=3)
    for i in range(9):
        at = start + dt.timedelta(seconds=15 * i)
        record(fake_host, at, stats_for(mine, cpu_s=7.5 * i), stats_for(theirs, cpu_s=1.5 * i),
               busy_s=i, total_s=2 * i, pool_used=0.95)  # fmt: skip
    metrics_rollup()
    # Time travel for the session's opening (auto_now_add): it cannot be made an hour old.
    with mock.patch("django.utils.timezone.now", return_value=start - dt.timedelta(hours=1)):
        session = ConsoleSession.objects.create(desktop=mine, user=employee, mode="full")
    ConsoleSession.objects.filter(pk=session.pk).update(ended_at=start - dt.timedelta(minutes=30))
    return mine, theirs


def test_the_host_page_shows_charts_capacity_alerts_and_desktops(client, admin_user_, busy_week):
    client.force_login(admin_user_)
    page = client.get(f"/admin/vms/host/{busy_week[0].host.pk}/change/").content.decode()
    assert 'data-metrics-host="fake"' in page
    for field in ("cpu_percent", "memory_used_mib", "running_desktops"):
        assert f'data-chart="{field}"' in page
    assert "storage pool default-pool is 95 % full" in page
    assert f'data-metrics-desktop="{busy_week[0].pk}"' in page
    assert "vendor/uplot/uPlot.min.css" in page and "/admin/vms/host/usage/" in page


def test_the_usage_report_per_user_group_and_template(client, admin_user_, busy_week, employee):
    client.force_login(admin_user_)
    today = timezone.localdate()
    query = f"start={today - dt.timedelta(days=6)}&end={today}"
    page = client.get(f"/admin/vms/host/usage/?{query}&by=user").content.decode()
    assert "employee1" in page and "employee2" in page
    rows = client.get(f"/admin/vms/host/usage/?{query}&by=user&format=csv").content.decode()
    header, first, second = rows.strip().splitlines()
    assert header == "user,desktops,desktop_hours,console_hours,peak_cpu_percent,peak_memory_mib"
    name, desktops, hours, *_rest = first.split(",")
    assert name in ("employee1", "employee2") and desktops == "1"
    assert float(hours) == pytest.approx(2 / 60, abs=0.01)  # two minutes running
    mine = dict(
        zip(header.split(","), (first if name == "employee1" else second).split(","), strict=True)
    )
    assert float(mine["console_hours"]) == pytest.approx(0.5, abs=0.01)
    assert float(mine["peak_cpu_percent"]) == 50.0 and float(mine["peak_memory_mib"]) == 200.0
    groups = client.get(f"/admin/vms/host/usage/?{query}&by=group&format=csv").content.decode()
    assert "\nfinance,1," in groups and "employee" in groups  # employee2's group: employee
    templates = client.get(f"/admin/vms/host/usage/?{query}&by=template&format=csv").content
    assert b"\nOffice,2," in templates


def test_a_formula_like_name_is_quoted_in_the_csv(fake_template, employee):
    from vms.services.metrics.usage import UsageRow, usage_csv

    assert "\n'=cmd|calc,0," in usage_csv([UsageRow("=cmd|calc")], by="user")


def test_bad_report_input_is_refused_clearly(client, admin_user_, employee):
    client.force_login(admin_user_)
    bad = client.get("/admin/vms/host/usage/?start=2026-02-10&end=2026-02-01&format=csv")
    assert bad.status_code == 400
    assert bad.content == b"The period must end on or after its first day."
    assert client.get("/admin/vms/host/usage/?start=nonsense&end=x").status_code == 200
    bad = client.get("/admin/vms/host/usage/?start=nonsense&end=2026-02-01&format=csv")
    assert bad.content == b"Start: Enter a valid date."
    client.force_login(employee)
    assert client.get("/admin/vms/host/usage/").status_code == 403  # admins only


def test_running_desktops_get_chart_boxes(client, employee, helpdesk_user, busy_week):
    client.force_login(employee)
    assert f'data-metrics-desktop="{busy_week[0].pk}"' in client.get("/").content.decode()
    client.force_login(helpdesk_user)
    page = client.get("/helpdesk/?q=employee1").content.decode()
    assert f'data-metrics-desktop="{busy_week[0].pk}"' in page and "js/metrics.js" in page
