"""The migrate action's request side (hosts on libvirt's test driver; the real move
between lab hosts is tests/fleet/test_migration.py): who may ask, what is refused and how."""

from __future__ import annotations

import pytest

from tests.factories import DesktopFactory
from vms.models import AuditEvent, Desktop, DesktopStatus, Host
from vms.services.fleet.placement import host_allocations

pytestmark = pytest.mark.django_db

# Never contacted: the test driver has no network. The lab hosts' range, so no real one.
NETWORKED = {"console_address": "10.213.250.2", "last_check_ok": True}


@pytest.fixture
def hosts(fake_host: Host) -> tuple[Host, Host]:
    Host.objects.filter(pk=fake_host.pk).update(**NETWORKED)
    other = Host.objects.create(
        name="other", uri="test:///default", storage_pool="default-pool",
        console_address="10.213.251.2", last_check_ok=True,
    )  # fmt: skip
    return Host.objects.get(pk=fake_host.pk), other


@pytest.fixture
def desktop(employee, fake_template, hosts) -> Desktop:
    return DesktopFactory(owner=employee, template=fake_template, host=hosts[0])


def _migrate(client, desktop, **body):  # type: ignore[no-untyped-def]
    return client.post(f"/api/desktops/{desktop.pk}/migrate/", body, format="json")


def test_an_admin_moves_it_to_the_host_named(api_for, admin_user_, desktop, hosts) -> None:
    answer = _migrate(api_for(admin_user_), desktop, host="other")
    assert answer.status_code == 202
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.MIGRATING and desktop.migrate_to == hosts[1]
    event = AuditEvent.objects.get(desktop=desktop, action="desktop.migrate")
    assert event.detail["migrate_to"] == "other"


def test_without_a_host_the_best_other_one_is_chosen(api_for, admin_user_, desktop, hosts) -> None:
    assert _migrate(api_for(admin_user_), desktop).status_code == 202
    desktop.refresh_from_db()
    assert desktop.migrate_to == hosts[1]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"enabled": False}, "cannot take desktops now"),
        ({"last_check_ok": False}, "cannot take desktops now"),
        ({"capacity_memory_mib": 1}, "has no room"),
        ({"console_address": "127.0.0.1"}, "has no room for this desktop, or no network"),
    ],
)
def test_a_host_that_cannot_take_it_is_409_and_nothing_changes(
    api_for, admin_user_, desktop, hosts, change, says
) -> None:
    Host.objects.filter(pk=hosts[1].pk).update(**change)
    answer = _migrate(api_for(admin_user_), desktop, host="other")
    assert answer.status_code == 409 and says in answer.json()["detail"]
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.RUNNING and desktop.migrate_to is None


def test_unknown_or_same_host_is_409(api_for, admin_user_, desktop) -> None:
    unknown = _migrate(api_for(admin_user_), desktop, host="nope")
    assert unknown.status_code == 409 and "unknown" in unknown.json()["detail"]
    same = _migrate(api_for(admin_user_), desktop, host="fake")
    assert same.status_code == 409 and "already runs on fake" in same.json()["detail"]


def test_a_host_on_loopback_cannot_send_its_desktops(api_for, admin_user_, desktop, hosts) -> None:
    Host.objects.filter(pk=hosts[0].pk).update(console_address="127.0.0.1")
    answer = _migrate(api_for(admin_user_), desktop, host="other")
    assert answer.status_code == 409 and "no network address" in answer.json()["detail"]


def test_a_stopped_desktop_is_409(api_for, admin_user_, desktop) -> None:
    Desktop.objects.filter(pk=desktop.pk).update(status=DesktopStatus.STOPPED)
    assert _migrate(api_for(admin_user_), desktop, host="other").status_code == 409


def test_an_unknown_field_is_400(api_for, admin_user_, desktop) -> None:
    answer = _migrate(api_for(admin_user_), desktop, destination="other")
    assert answer.status_code == 400 and "takes no 'destination'" in answer.json()["detail"]


def test_owner_and_helpdesk_may_not_and_others_get_404(
    api_for, employee, helpdesk_user, other_employee, desktop
) -> None:
    assert _migrate(api_for(employee), desktop, host="other").status_code == 403
    assert _migrate(api_for(helpdesk_user), desktop, host="other").status_code == 403
    assert _migrate(api_for(other_employee), desktop, host="other").status_code == 404


def test_a_migrating_desktop_counts_on_its_target_host(
    api_for, admin_user_, desktop, hosts
) -> None:

    _migrate(api_for(admin_user_), desktop, host="other")
    used = host_allocations()
    assert used[hosts[1].pk]["used_memory_mib"] == desktop.memory_mib
    assert used[hosts[0].pk]["used_memory_mib"] == desktop.memory_mib
