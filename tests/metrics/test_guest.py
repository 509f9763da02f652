"""Sampling a real running guest on the real libvirtd, through the beat's round and the
host's own worker: plausible values at once, and a CPU-busy loop typed into the guest's
serial console shows up as high CPU within two sampling periods."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import wait_for_status
from vms import tasks
from vms.models import Desktop
from vms.models.metrics import DesktopLoad, DesktopSample, HostUsage

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
PERIOD_S = 3.0  # the test's sampling period: it runs the round itself


def sample_round(desktop: Desktop, *, timeout: float = 60) -> DesktopSample:
    """One beat round (a task on each host's queue, run by the real worker); the sample
    it stored for `desktop`."""
    before = DesktopSample.objects.filter(desktop=desktop).count()
    assert tasks.metrics_sample_all_hosts() == 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = DesktopSample.objects.filter(desktop=desktop).order_by("at")
        if samples.count() > before:
            return samples.last()
        time.sleep(0.2)
    raise AssertionError("the host's worker stored no sample")


@pytest.fixture
def running_guest(celery_worker, api_for, employee, demo_template):
    launched = api_for(employee).post("/api/desktops/", {"template": demo_template.pk},
                                      format="json")  # fmt: skip
    assert launched.status_code == 202, launched.content
    desktop = wait_for_status(launched.json()["id"], "running")
    yield desktop
    api_for(employee).post(f"/api/desktops/{desktop.pk}/force-stop/")
    wait_for_status(desktop.pk, "stopped")


def test_a_running_guest_gives_plausible_values(running_guest, local_host):
    first = sample_round(running_guest)
    assert first.cpu_percent is None  # nothing to compare with yet
    assert 16 <= first.memory_mib <= 2 * running_guest.memory_mib + 256  # RSS of QEMU
    time.sleep(PERIOD_S)
    second = sample_round(running_guest)
    assert 0 <= second.cpu_percent <= 100
    assert second.disk_read_bps is not None and second.disk_read_bps >= 0
    assert second.running_s == pytest.approx(PERIOD_S, abs=3)
    load = DesktopLoad.objects.get(desktop=running_guest)
    assert load.host == local_host and load.counters["cpu_time_ns"] > 0
    assert load.counters["block_rd_bytes"] > 1_000_000  # it booted from that disk
    usage = HostUsage.objects.get(host=local_host)
    assert usage.running_desktops >= 1 and 0 <= usage.cpu_percent <= 100
    assert 0 < usage.memory_used_mib < usage.memory_total_mib
    assert usage.pool_capacity_bytes > 0


def cpu_share_of(pid: int, seconds: float) -> float:
    """The percent of one CPU process `pid` got over the next `seconds` (from /proc)."""

    def used() -> float:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, start = used(), time.monotonic()
    time.sleep(seconds)
    return 100 * (used() - before) / (time.monotonic() - start)


def test_a_busy_loop_in_the_guest_shows_as_high_cpu_within_two_periods(running_guest, local_host):
    """The busy loop must show as a jump from near nothing to what the guest really got:
    its QEMU's CPU time read from /proc over the same periods (all guests share one CPU
    cgroup, and these 2-core machines are shared, so a busy guest may get far less than a
    whole CPU). Where a CPU-bound thread of the host gets most of a CPU, so must the guest."""
    from tests.guestshell import guest_shell  # the lead's guest console driver

    qemu = int(Path(f"/run/libvirt/qemu/{running_guest.domain_name}.pid").read_text())
    with guest_shell(local_host.uri, running_guest.domain_name) as shell:
        sample_round(running_guest)
        time.sleep(PERIOD_S)
        idle = sample_round(running_guest).cpu_percent
        shell.run("(while :; do :; done) >/dev/null 2>&1 & echo $! > /tmp/busy", timeout=30)
        readings, got = [], []
        for _ in range(2):  # two sampling periods
            got.append(cpu_share_of(qemu, PERIOD_S))
            readings.append(sample_round(running_guest).cpu_percent)
        reference = host_thread_share(PERIOD_S)
        shell.run("kill $(cat /tmp/busy)", timeout=30)
    print(f"guest CPU: idle {idle} %, busy {readings} %, QEMU by /proc {got} %, "
          f"a host CPU-bound thread {reference:.0f} %")  # fmt: skip
    assert idle is not None and idle < 10, idle
    assert max(readings) >= max(10.0, 5 * idle), (idle, readings)
    assert max(readings) == pytest.approx(max(got), rel=0.5, abs=10), (readings, got)
    if reference >= 90:  # a host with CPU to spare
        assert max(readings) >= 70, (readings, reference)


def host_thread_share(seconds: float) -> float:
    """What one CPU-bound thread of the host gets now, in percent of a CPU."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        return cpu_share_of(loop.pid, seconds)
    finally:
        loop.kill()
        loop.wait()
