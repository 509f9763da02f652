"""The metrics API: a desktop's series for its owner, help-desk and admins, 404 for anyone
else, 400 for a bad period; a host's series for admins only; both in the OpenAPI schema."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics.helpers import record, stats_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def measured(fake_host, fake_template, employee):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-api")
    now = timezone.now()
    for i in range(3):
        at = now - dt.timedelta(seconds=30 - 15 * i)
        record(fake_host, at, stats_for(desktop, cpu_s=3 * i), busy_s=i, total_s=4 * i)
    return desktop


def test_owner_helpdesk_and_admin_get_the_series(
    api_for, measured, employee, helpdesk_user, admin_user_
):
    for user in (employee, helpdesk_user, admin_user_):
        answer = api_for(user).get(f"/api/desktops/{measured.pk}/metrics/?period=1h")
        assert answer.status_code == 200, answer.content
        body = answer.json()
        assert body["period"] == "1h" and body["resolution_s"] == 15
        assert len(body["series"]["t"]) == 3
        assert body["series"]["cpu_percent"] == [None, 20.0, 20.0]
        assert body["series"]["memory_mib"] == [200.0] * 3
    day = api_for(employee).get(f"/api/desktops/{measured.pk}/metrics/?period=24h").json()
    assert day["resolution_s"] == 60 and day["series"]["t"] == []  # not rolled up yet


def test_another_users_desktop_metrics_answer_404(api_for, measured, other_employee):
    answer = api_for(other_employee).get(f"/api/desktops/{measured.pk}/metrics/")
    assert answer.status_code == 404
    assert "cpu_percent" not in answer.content.decode()


def test_a_bad_period_is_400_with_a_detail(api_for, measured, employee):
    answer = api_for(employee).get(f"/api/desktops/{measured.pk}/metrics/?period=1y")
    assert answer.status_code == 400
    assert answer.json()["detail"] == "period must be one of 1h, 24h, 7d."


def test_host_metrics_are_for_admins(api_for, measured, fake_host, employee, admin_user_):
    assert api_for(employee).get("/api/hosts/fake/metrics/").status_code == 403
    body = api_for(admin_user_).get("/api/hosts/fake/metrics/?period=1h").json()
    assert body["series"]["running_desktops"] == [1.0, 1.0, 1.0]
    assert body["series"]["cpu_percent"] == [None, 25.0, 25.0]
    assert api_for(admin_user_).get("/api/hosts/nowhere/metrics/").status_code == 404


def test_the_routes_are_in_the_schema(client):
    schema = client.get("/api/schema/?format=json").json()
    period = schema["paths"]["/api/desktops/{id}/metrics/"]["get"]["parameters"]
    assert any(p["name"] == "period" and p["schema"]["enum"] == ["1h", "24h", "7d"] for p in period)
    assert "/api/hosts/{name}/metrics/" in schema["paths"]
