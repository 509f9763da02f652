"""Placement: of the enabled hosts with room, the least loaded one."""

from __future__ import annotations

import pytest

from tests.fixtures import make_desktop
from vms.models import Host
from vms.services.core.errors import NoHostAvailable
from vms.services.fleet.placement import host_choose

pytestmark = pytest.mark.django_db


def test_picks_the_least_loaded_host_and_skips_full_and_disabled(fake_template, employee) -> None:
    fake = Host.objects.get(name="fake")
    roomy = Host.objects.create(name="roomy", uri="test:///default", capacity_memory_mib=8192)
    Host.objects.create(
        name="off", uri="test:///default", enabled=False, capacity_memory_mib=1_000_000
    )
    make_desktop(employee, fake_template, host=roomy, memory_mib=2048)
    fake.capacity_memory_mib = 2048
    fake.save()
    make_desktop(employee, fake_template, host=fake, memory_mib=1024)
    assert host_choose(template=fake_template) == roomy  # a quarter used beats a half

    make_desktop(employee, fake_template, host=roomy, memory_mib=6144)
    assert host_choose(template=fake_template) == fake  # roomy is full now


def test_no_host_with_room_is_a_clear_refusal(fake_template) -> None:
    Host.objects.update(capacity_vcpus=0)
    with pytest.raises(NoHostAvailable, match="No host has room"):
        host_choose(template=fake_template)


def test_launch_with_no_room_is_503_and_creates_nothing(api_for, employee, fake_template) -> None:
    from vms.models import Desktop

    Host.objects.update(enabled=False)
    response = api_for(employee).post(
        "/api/desktops/", {"template": fake_template.pk}, format="json"
    )
    assert response.status_code == 503
    assert "No host has room" in response.json()["detail"]
    assert not Desktop.objects.exists()
