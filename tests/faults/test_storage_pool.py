"""Provisioning into a storage pool that is full or not writable: the desktop ends in
`error` with a message naming the pool and the problem, nothing is left in libvirt, and the
quota is not consumed (a user allowed one desktop can launch again at once)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.support import assert_quota_counts
from tests.fixtures import wait_for_status
from vms.hypervisor import get_hypervisor
from vms.models import DesktopStatus, Host, Quota
from vms.settings_access import name_prefix

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

POOL_NAME = "portal-test-faults"
POOL_PATH = Path("/var/lib/desktop-portal/test-faults-pool")


def _virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True)


def _remove_pool() -> None:
    _virsh("pool-destroy", POOL_NAME)
    _virsh("pool-undefine", POOL_NAME)
    if subprocess.run(["mountpoint", "-q", str(POOL_PATH)]).returncode == 0:
        subprocess.run(["umount", str(POOL_PATH)], check=True)


@pytest.fixture
def tiny_pool(local_host: Host) -> Iterator[Path]:
    """A libvirt dir pool on a 2 MiB tmpfs; host 'local' puts new desktops there."""
    _remove_pool()  # left over from an interrupted run?
    POOL_PATH.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(POOL_PATH)], check=True)
    try:
        get_hypervisor(local_host.uri).ensure_pool(name=POOL_NAME, path=str(POOL_PATH))
        Host.objects.filter(pk=local_host.pk).update(storage_pool=POOL_NAME)
        yield POOL_PATH
    finally:
        _remove_pool()
        POOL_PATH.rmdir()


def fill(path: Path) -> None:
    """Write until the file system says ENOSPC."""
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={path / 'filler.bin'}", "bs=64k"], capture_output=True
    )
    assert (
        subprocess.run(
            ["df", "--output=avail", str(path)], capture_output=True, text=True
        ).stdout.split()[-1]
        == "0"
    )


@pytest.mark.parametrize(
    ("fault", "problem"), [("full", "is full"), ("read-only", "is not writable")]
)
def test_launch_into_a_broken_pool_fails_cleanly(
    fault, problem, tiny_pool, celery_worker, api_for, employee, demo_template, local_host
) -> None:
    if fault == "full":
        fill(tiny_pool)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_pool)], check=True)
    Quota.objects.create(user=employee, max_desktops=1)
    client = api_for(employee)

    for _attempt in range(2):  # the failed launch does not hold the one allowed desktop
        response = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
        assert response.status_code == 202, response.content
        desktop = wait_for_status(response.json()["id"], DesktopStatus.ERROR, timeout=60)
        assert f"storage pool '{POOL_NAME}' {problem}" in desktop.last_error
        assert_quota_counts(employee, [])

    hypervisor = get_hypervisor(local_host.uri)
    assert hypervisor.list_domains(prefix=name_prefix()) == []
    assert hypervisor.list_volumes(pool=POOL_NAME, prefix=name_prefix()) == []
    assert not [p for p in tiny_pool.iterdir() if p.name.startswith(name_prefix())]
    # The failed desktop can be deleted like any other.
    assert client.delete(f"/api/desktops/{desktop.pk}/").status_code == 202
    wait_for_status(desktop.pk, DesktopStatus.DELETED, timeout=60)
