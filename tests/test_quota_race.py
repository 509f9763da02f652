"""Concurrent launches cannot overshoot a quota (the row lock, on PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.concurrency import outcomes_at_once
from vms.models import Desktop, Quota
from vms.services.core.errors import QuotaExceeded
from vms.services.desktops.requests import desktop_create

pytestmark = pytest.mark.django_db(transaction=True)


def test_quota_race_on_postgres_creates_exactly_the_quota(
    employee, fake_template, settings
) -> None:
    """20 concurrent launches by one user with a quota of 2 create exactly 2 desktops."""
    assert connection.vendor == "postgresql", "this test proves the row lock on PostgreSQL"
    Quota.objects.create(
        user=employee, max_desktops=2, max_vcpus=99, max_memory_mib=99999, max_disk_gib=999
    )

    def launch() -> str:
        desktop_create(user=employee, template_id=fake_template.pk)
        return "created"

    outcomes = outcomes_at_once([launch] * 20, refusals=(QuotaExceeded,))
    assert sorted(outcomes).count("created") == 2
    assert outcomes.count("refused") == 18
    assert Desktop.objects.filter(owner=employee).count() == 2
