"""Effective quota: the user's own, else the most generous of their groups', else the default."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from tests.fixtures import make_desktop
from vms.models import DesktopStatus, Quota
from vms.services.desktops.quotas import Limits, effective_quota, first_exceeded, usage

pytestmark = pytest.mark.django_db


def test_default_quota_applies_without_any_row(employee, settings) -> None:
    assert effective_quota(user=employee) == Limits(**settings.DEFAULT_QUOTA)


def test_most_generous_group_value_per_limit(employee) -> None:
    small = Group.objects.create(name="small")
    big = Group.objects.create(name="big")
    employee.groups.add(small, big)
    Quota.objects.create(
        group=small, max_desktops=5, max_vcpus=2, max_memory_mib=100, max_disk_gib=9
    )
    Quota.objects.create(group=big, max_desktops=1, max_vcpus=8, max_memory_mib=50, max_disk_gib=3)
    assert effective_quota(user=employee) == Limits(5, 8, 100, 9)


def test_user_quota_overrides_groups(employee) -> None:
    group = Group.objects.create(name="generous")
    employee.groups.add(group)
    Quota.objects.create(
        group=group, max_desktops=10, max_vcpus=10, max_memory_mib=10, max_disk_gib=10
    )
    Quota.objects.create(
        user=employee, max_desktops=1, max_vcpus=1, max_memory_mib=1, max_disk_gib=1
    )
    assert effective_quota(user=employee) == Limits(1, 1, 1, 1)


def test_usage_ignores_deleted_and_failed_desktops(employee, fake_template) -> None:
    for status in (DesktopStatus.RUNNING, DesktopStatus.DELETED, DesktopStatus.ERROR):
        make_desktop(
            employee, fake_template, name=status, status=status, vcpus=2, memory_mib=300, disk_gib=4
        )
    assert usage(user=employee) == Limits(1, 2, 300, 4)


def test_first_exceeded_names_the_limit(fake_template) -> None:
    refusal = first_exceeded(
        limits=Limits(5, 5, 200, 50), used=Limits(0, 0, 0, 0), template=fake_template
    )
    assert refusal is not None
    assert refusal.limit == "memory (MiB)"
    assert "limit is 200" in refusal.message
