"""What reconcile may remove when hosts share the pool directory and desktops move between
them (the selection only; tests/fleet/test_reconcile_lab.py runs it on real lab hosts)."""

from __future__ import annotations

import pytest

from tests.factories import DesktopFactory
from vms.models import DesktopStatus, Host
from vms.services.fleet.reconcile import domains_owned_by, volumes_in_use

pytestmark = pytest.mark.django_db


@pytest.fixture
def hosts(fake_host: Host) -> tuple[Host, Host, Host]:
    b = Host.objects.create(name="b", uri="qemu+tls://10.213.2.2/system")
    c = Host.objects.create(name="c", uri="qemu+tls://10.213.3.2/system")
    return fake_host, b, c


def test_an_incoming_migration_belongs_to_its_destination(employee, fake_template, hosts) -> None:
    a, b, c = hosts
    moving = DesktopFactory(
        owner=employee, template=fake_template, host=a, migrate_to=b,
        status=DesktopStatus.MIGRATING, domain_name="dpt-moving",
    )  # fmt: skip
    assert moving.domain_name in domains_owned_by(host=a)
    assert moving.domain_name in domains_owned_by(host=b)
    assert moving.domain_name not in domains_owned_by(host=c)


def test_every_live_desktops_disk_is_in_use_whatever_its_host(
    employee, fake_template, hosts
) -> None:
    a, b, _ = hosts
    on_a = DesktopFactory(owner=employee, template=fake_template, host=a, volume_name="v-a")
    on_b = DesktopFactory(owner=employee, template=fake_template, host=b, volume_name="v-b")
    gone = DesktopFactory(
        owner=employee, template=fake_template, host=b, volume_name="v-gone",
        status=DesktopStatus.DELETED,
    )  # fmt: skip
    in_use = volumes_in_use()
    assert {on_a.volume_name, on_b.volume_name} <= in_use
    assert gone.volume_name not in in_use
