"""Concurrent launches cannot overshoot a quota (the row lock, on PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from vms.models import Desktop, Quota
from vms.services.desktops import desktop_create
from vms.services.errors import QuotaExceeded

pytestmark = pytest.mark.django_db(transaction=True)


def test_quota_race_on_postgres_creates_exactly_the_quota(
    employee, fake_template, settings
) -> None:
    """20 concurrent launches by one user with a quota of 2 create exactly 2 desktops."""
    assert connection.vendor == "postgresql", "this test proves the row lock on PostgreSQL"
    Quota.objects.create(
        user=employee, max_desktops=2, max_vcpus=99, max_memory_mib=99999, max_disk_gib=999
    )
    barrier = threading.Barrier(20)
    outcomes: list[str] = []

    def launch() -> None:
        barrier.wait()
        try:
            desktop_create(user=employee, template_id=fake_template.pk)
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=launch) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("created") == 2
    assert outcomes.count("refused") == 18
    assert Desktop.objects.filter(owner=employee).count() == 2
