"""Helpers of the fault tests: what libvirt really holds, the quota, stopping and starting
libvirtd."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.parallel import libvirtd_restart_allowed
from vms.hypervisor import domain_name, get_hypervisor, volume_name
from vms.models import Desktop, Host
from vms.services.desktops.quotas import Limits, usage
from vms.settings_access import name_prefix


def libvirt_objects(host: Host) -> tuple[list[str], list[str]]:
    """Names of every domain and volume with the tests' prefix (on the host's pool)."""
    hypervisor = get_hypervisor(host.uri)
    domains = [d.name for d in hypervisor.list_domains(prefix=name_prefix())]
    volumes = [
        v.name for v in hypervisor.list_volumes(pool=host.storage_pool, prefix=name_prefix())
    ]
    return domains, volumes


def assert_exactly_its_own(desktop: Desktop, host: Host) -> None:
    """libvirt holds one domain and one volume with our prefix: this desktop's."""
    assert libvirt_objects(host) == ([desktop.domain_name], [desktop.volume_name])


def assert_quota_counts(user: Any, desktops: list[Desktop]) -> None:
    """The user's quota usage is exactly the given (live) desktops."""
    assert usage(user=user) == Limits(
        max_desktops=len(desktops),
        max_vcpus=sum(d.vcpus for d in desktops),
        max_memory_mib=sum(d.memory_mib for d in desktops),
        max_disk_gib=sum(d.disk_gib for d in desktops),
    )


def wait_until(predicate: Any, *, timeout: float, step: float = 0.005, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def desktop_row(owner: Any, template: Any, host: Host, name: str) -> Desktop:
    """A desktop as a launch inserts it, with no task queued for it."""
    desktop = Desktop(
        owner=owner,
        template=template,
        host=host,
        name=name,
        vcpus=template.vcpus,
        memory_mib=template.memory_mib,
        disk_gib=template.disk_gib,
        progress="queued",
    )
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    desktop.save(force_insert=True)
    return desktop


# --- libvirtd -----------------------------------------------------------------------------

LIBVIRT_PIDFILE = Path("/run/libvirtd.pid")


def libvirtd_pid() -> int:
    return int(LIBVIRT_PIDFILE.read_text().strip())


def libvirtd_answers() -> bool:
    result = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30
    )
    return result.returncode == 0


def libvirtd_stop() -> None:
    """Stop libvirtd (the pid in its pid file) and wait until it is gone. Guests keep
    running: QEMU processes are not libvirtd's children once started. Only a test marked
    `restarts_libvirtd` may: it runs while no other test does (tests/parallel.py)."""
    assert libvirtd_restart_allowed(), "mark the test restarts_libvirtd"
    pid = libvirtd_pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("libvirtd did not stop within 30 s")


def libvirtd_start() -> None:
    """Start libvirtd the way scripts/setup.sh does and wait until it answers."""
    if not libvirtd_answers():
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if libvirtd_answers():
            return
        time.sleep(0.2)
    raise AssertionError("libvirtd did not answer within 60 s of its restart")


def qemu_pid(domain_name: str) -> int:
    """The QEMU process of a running domain (libvirt writes its pid file)."""
    return int(Path(f"/run/libvirt/qemu/{domain_name}.pid").read_text().strip())
