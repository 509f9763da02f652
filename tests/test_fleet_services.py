"""The fleet's request and portal side on libvirt's test driver (the real hosts are in
tests/fleet/): placement by live load, heartbeats, down and up, maintenance and draining,
recovery passes. No guest runs here; nothing is sent to any host's address."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import DesktopFactory
from vms.hypervisor import get_hypervisor
from vms.models import AuditEvent, Desktop, DesktopStatus, Host, HostStatus
from vms.services.core.errors import NoHostAvailable
from vms.services.fleet import recovery
from vms.services.fleet.heartbeat import (
    cpu_percent,
    host_heartbeat,
    host_mark_down,
    host_status_move,
    hosts_silent,
)
from vms.services.fleet.membership import host_drain_pass, host_maintenance_set
from vms.services.fleet.placement import host_choose

pytestmark = pytest.mark.django_db
S = DesktopStatus


def _host(name: str, index: int, **fields: object) -> Host:
    # Never contacted: the test driver has no network. The lab hosts' range, so no real one.
    # The test driver has no lock manager: these stand for hosts whose heartbeat proved
    # theirs (tests/test_disk_leases.py tests the proof and the refusal without it).
    values = {"uri": "test:///default", "storage_pool": "default-pool",
              "console_address": f"10.213.{240 + index}.2", "last_check_ok": True,
              "disk_lock_ok": True, "capacity_vcpus": 16, "capacity_memory_mib": 8192,
              **fields}  # fmt: skip
    return Host.objects.create(name=name, **values)


@pytest.fixture
def pair(fake_host: Host) -> tuple[Host, Host]:
    Host.objects.filter(pk=fake_host.pk).update(enabled=False)
    return _host("hosta", 1), _host("hostb", 2)


def test_twenty_launches_spread_evenly_over_two_equal_hosts(pair, employee, fake_template) -> None:
    counts = {host.pk: 0 for host in pair}
    for _ in range(20):
        host = host_choose(template=fake_template)
        DesktopFactory(owner=employee, template=fake_template, host=host)
        counts[host.pk] += 1
    assert sorted(counts.values()) == [10, 10]


def test_a_host_busy_with_other_work_is_spared(pair, fake_template) -> None:
    Host.objects.filter(pk=pair[0].pk).update(load_cpu_percent=95.0)
    assert host_choose(template=fake_template) == pair[1]


def test_maintenance_down_and_failing_hosts_take_nothing(pair, fake_template) -> None:
    Host.objects.filter(pk=pair[0].pk).update(maintenance=True)
    Host.objects.filter(pk=pair[1].pk).update(status=HostStatus.DOWN)
    with pytest.raises(NoHostAvailable):
        host_choose(template=fake_template)
    Host.objects.filter(pk=pair[1].pk).update(status=HostStatus.UP, last_checked_at=timezone.now(),
                                              last_check_ok=False)  # fmt: skip
    with pytest.raises(NoHostAvailable):
        host_choose(template=fake_template)


def test_live_memory_and_overcommit_decide_room(pair, employee, fake_template) -> None:
    need = fake_template.memory_mib
    Host.objects.filter(pk=pair[0].pk).update(load_available_memory_mib=need)  # no reserve left
    Host.objects.filter(pk=pair[1].pk).update(capacity_vcpus=1)
    DesktopFactory(owner=employee, template=fake_template, host=pair[1], vcpus=1)
    with pytest.raises(NoHostAvailable):
        host_choose(template=fake_template)
    Host.objects.filter(pk=pair[1].pk).update(cpu_overcommit=4.0)
    assert host_choose(template=fake_template) == pair[1]


def test_cpu_percent_needs_two_comparable_samples() -> None:
    before = {"busy_ns": 1_000, "total_ns": 10_000}
    assert cpu_percent(before=before, after={"busy_ns": 3_000, "total_ns": 14_000}) == 50.0
    assert cpu_percent(before={}, after=before) is None
    assert cpu_percent(before=before, after={"busy_ns": 10, "total_ns": 20}) is None  # reboot


def test_the_heartbeat_records_what_the_host_really_has(pair, settings) -> None:
    settings.STORAGE_POOL_PATH = "/default-pool"  # where the test driver keeps its pool
    host = pair[0]
    assert host_heartbeat(host=host)
    host.refresh_from_db()  # a heartbeat task loads the host afresh each time
    assert host_heartbeat(host=host)
    host.refresh_from_db()
    assert host.load_cpus == 16 and host.load_memory_mib > 0  # the test driver's node
    # The driver's state lives as long as the process: other tests may run guests there too.
    running = [d for d in get_hypervisor(host.uri).list_domains(prefix="") if d.state == "running"]
    assert host.load_running_guests == len(running) >= 1
    assert host.load_cpu_counters["total_ns"] > 0
    assert host.load_cpu_percent is None  # the test driver's counters stand still
    assert host.last_heartbeat_at is not None and host.last_check_ok


def test_a_silent_host_goes_down_once_and_its_desktops_are_recovered(
    pair, employee, fake_template
) -> None:
    lost, spare = pair
    running = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.RUNNING)
    stopped = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.STOPPED)
    Host.objects.filter(pk=lost.pk).update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    Host.objects.filter(pk=spare.pk).update(last_heartbeat_at=timezone.now())
    assert [h.pk for h in hosts_silent()] == [lost.pk]
    assert host_mark_down(host=lost) and not host_mark_down(host=lost)
    done = recovery.host_recovery_start(host=lost)
    assert done == {"recovering": 1, "rehomed": 1, "held": 0}
    assert recovery.recovering_resend() == 1  # sent again each round until it runs
    running.refresh_from_db()
    stopped.refresh_from_db()
    assert running.status == S.RECOVERING and running.migrate_to == spare
    assert "restarts on host hostb" in running.last_error
    assert stopped.host == spare and stopped.status == S.STOPPED
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"host.down", "desktop.recovering", "desktop.rehomed"} <= actions


def test_recovery_waits_when_no_host_can_take_the_desktop(pair, employee, fake_template) -> None:
    lost, spare = pair
    Host.objects.filter(pk=lost.pk).update(status=HostStatus.DOWN)
    Host.objects.filter(pk=spare.pk).update(maintenance=True)
    desktop = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.RUNNING)
    assert recovery.host_recovery_start(host=lost)["recovering"] == 0
    desktop.refresh_from_db()
    assert desktop.status == S.RUNNING and desktop.host == lost
    Host.objects.filter(pk=spare.pk).update(maintenance=False)  # room again: it goes
    assert recovery.host_recovery_start(host=lost)["recovering"] == 1


def test_a_recovery_pass_leaves_a_host_that_answered_again_alone(
    pair, employee, fake_template
) -> None:
    """The round read the host as down; before its pass, the host's heartbeat brought it
    back and kept its running desktop (host_rejoin). The pass must not send it away."""
    lost, _spare = pair
    desktop = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.RUNNING)
    stopped = DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.STOPPED)
    Host.objects.filter(pk=lost.pk).update(status=HostStatus.DOWN)
    seen_down = Host.objects.get(pk=lost.pk)  # the round's list of down hosts
    assert host_status_move(host=Host.objects.get(pk=lost.pk), old=HostStatus.DOWN,
                            new=HostStatus.UP)  # fmt: skip
    assert recovery.host_recovery_start(host=seen_down) == {"recovering": 0, "rehomed": 0,
                                                            "held": 0}  # fmt: skip
    desktop.refresh_from_db()
    stopped.refresh_from_db()
    assert desktop.status == S.RUNNING and desktop.migrate_to is None and desktop.host == lost
    assert stopped.host == lost
    assert not AuditEvent.objects.filter(action="desktop.recovering").exists()


def test_maintenance_drains_running_and_rehomes_stopped(
    pair, admin_user_, employee, fake_template
) -> None:
    source, target = pair
    running = DesktopFactory(owner=employee, template=fake_template, host=source, status=S.RUNNING)
    stopped = DesktopFactory(owner=employee, template=fake_template, host=source, status=S.STOPPED)
    assert host_maintenance_set(actor=admin_user_, host=source, enabled=True)
    assert not host_maintenance_set(actor=admin_user_, host=source, enabled=True)
    assert host_drain_pass(host_id=source.pk, actor_id=admin_user_.pk)  # the migration runs
    running.refresh_from_db()
    stopped.refresh_from_db()
    assert running.status == S.MIGRATING and running.migrate_to == target
    assert stopped.host == target
    Desktop.objects.filter(pk=running.pk).update(status=S.RUNNING, host=target, migrate_to=None)
    assert not host_drain_pass(host_id=source.pk, actor_id=admin_user_.pk)  # empty now
    assert host_maintenance_set(actor=admin_user_, host=source, enabled=False)
    assert not host_drain_pass(host_id=source.pk, actor_id=admin_user_.pk)  # not in maintenance


def test_a_recovery_pass_reads_the_fleet_once_not_once_per_desktop(
    pair, employee, fake_template
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    lost, spare = pair

    def one_pass(desktops: int) -> int:
        for _ in range(desktops):
            DesktopFactory(owner=employee, template=fake_template, host=lost, status=S.RUNNING)
        Host.objects.filter(pk=lost.pk).update(status=HostStatus.DOWN)
        with CaptureQueriesContext(connection) as queries:
            assert recovery.host_recovery_start(host=lost)["recovering"] == desktops
        Desktop.objects.filter(host=lost).update(status=S.DELETED)
        Desktop.objects.filter(migrate_to=spare).update(status=S.DELETED)
        return len(queries)

    # Each more desktop costs its compare-and-set and its audit row, nothing fleet-wide.
    assert one_pass(6) - one_pass(3) == 3 * 2
