"""Losing a host: its libvirtd, lock daemon and QEMUs killed (a dead host), or its link
cut (a partition, where its QEMUs still run and write). Desktops are restarted on the other
lab host only when no QEMU can still hold their disk; a host that comes back rejoins."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import libvirt
import pytest

from tests.fixtures import wait_for_status
from vms import tasks
from vms.models import AuditEvent, Desktop, Host, HostStatus
from vms.services.desktops import desktop_create
from vms.services.heartbeat import host_heartbeat
from vms.services.reconcile import reconcile_host

from .conftest import lab_host

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
RECOVERY_GOAL_S = 60


@pytest.fixture
def fast_heartbeat(settings) -> None:  # type: ignore[no-untyped-def]
    settings.HOST_HEARTBEAT_INTERVAL_S = 2
    settings.HOST_DOWN_AFTER_S = 6


def launch_on(host: Host, other: Host, employee, template) -> Desktop:  # type: ignore[no-untyped-def]
    Host.objects.filter(pk=other.pk).update(enabled=False)
    desktop = desktop_create(user=employee, template_id=template.pk)
    Host.objects.filter(pk=other.pk).update(enabled=True)
    assert desktop.host == host
    running = wait_for_status(desktop.pk, "running", timeout=120)
    # No beat ran while it booted: fresh heartbeats, or the next round finds both silent.
    for each in (host, other):
        assert host_heartbeat(host=Host.objects.get(pk=each.pk))
    return running


def rounds_until(done: Callable[[], bool], *, timeout: float) -> float:
    """Run the beat's heartbeat round every second until `done()`; the seconds it took."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, "not done in time"
        tasks.heartbeat_all_hosts()
        time.sleep(1)
    return time.monotonic() - started


def running_on(host: Host) -> set[str]:
    """Guests that really run on `host` (a QEMU that is still starting, paused until it
    gets its disk's locks, does not count: it has written nothing)."""
    conn = libvirt.open(host.uri)
    try:
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return {domain.name() for domain in active if _runs(domain)}
    finally:
        conn.close()


def _runs(domain: libvirt.virDomain) -> bool:
    try:
        return bool(domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING)
    except libvirt.libvirtError:
        return False


def state_of(host: Host, desktop: Desktop) -> tuple[int, int]:
    conn = libvirt.open(host.uri)
    try:
        return tuple(conn.lookupByName(desktop.domain_name).state())  # type: ignore[return-value]
    finally:
        conn.close()


def namespace_pids(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "pids", f"dplab-{name}"], capture_output=True, text=True)
    return out.stdout.split()


def test_a_dead_hosts_desktop_restarts_on_the_other_host_and_the_host_rejoins(
    two_hosts, fast_heartbeat, employee, demo_template
) -> None:
    laba, labb = two_hosts
    desktop = launch_on(laba, labb, employee, demo_template)  # both hosts heard from since
    volume = desktop.volume_name

    subprocess.run(["kill", "-KILL", *namespace_pids("laba")], check=True)  # libvirtd, QEMU...
    killed = time.monotonic()
    rounds_until(lambda: Desktop.objects.filter(pk=desktop.pk, host=labb, status="running")
                 .exists(), timeout=120)  # fmt: skip
    took = time.monotonic() - killed
    print(f"host loss to desktop running again: {took:.1f} s")
    assert took <= RECOVERY_GOAL_S
    desktop.refresh_from_db()
    assert desktop.volume_name == volume  # its own disk, not a new one
    assert desktop.domain_name in running_on(labb)
    assert "after host laba stopped answering" in desktop.last_error
    assert Host.objects.get(pk=laba.pk).status == HostStatus.DOWN
    recovered = AuditEvent.objects.get(action="desktop.recovered", desktop=desktop)
    assert recovered.detail["target"] == "labb"

    assert lab_host("up", "laba").returncode == 0  # the host comes back (its daemons)
    rounds_until(lambda: Host.objects.get(pk=laba.pk).status == HostStatus.UP, timeout=60)
    reconcile_host(host=Host.objects.get(pk=laba.pk))  # drops its stale definition
    assert desktop.domain_name not in running_on(laba)
    assert Desktop.objects.get(pk=desktop.pk).host == labb
    assert AuditEvent.objects.filter(action="host.up", detail__name="laba").exists()


def test_a_cut_off_hosts_desktop_is_never_started_twice_and_stays_when_it_returns(
    two_hosts, fast_heartbeat, employee, demo_template
) -> None:
    laba, labb = two_hosts
    desktop = launch_on(laba, labb, employee, demo_template)  # both hosts heard from since

    subprocess.run(["ip", "link", "set", "dplab-laba", "down"], check=True)  # the partition
    try:
        rounds_until(lambda: Desktop.objects.filter(pk=desktop.pk, status="recovering").exists(),
                     timeout=60)  # fmt: skip
        # Rounds of recovery attempts: labb never runs it while laba's QEMU holds the disk.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            tasks.heartbeat_all_hosts()
            assert desktop.domain_name not in running_on(labb)
            time.sleep(1)
        waiting = Desktop.objects.get(pk=desktop.pk)
        assert waiting.status == "recovering" and "as soon as it is certain" in waiting.last_error
    finally:
        subprocess.run(["ip", "link", "set", "dplab-laba", "up"], check=True)

    rounds_until(lambda: Desktop.objects.filter(pk=desktop.pk, status="running").exists(),
                 timeout=90)  # fmt: skip
    desktop.refresh_from_db()
    assert desktop.host == laba and desktop.migrate_to is None
    assert desktop.domain_name in running_on(laba), state_of(laba, desktop)
    assert desktop.domain_name not in running_on(labb)
    cancelled = AuditEvent.objects.get(action="desktop.recovery_cancelled", desktop=desktop)
    assert cancelled.detail["host"] == "laba"
    assert not AuditEvent.objects.filter(action="desktop.recovered", desktop=desktop).exists()
