"""Fixtures for the hypervisor layer's tests (no Django, no database).

* Unit tests use libvirt's in-process ``test:///default`` driver. All connections to it in
  one process share state, so every test works with its own unique names.
* Tests marked ``libvirt`` use the real ``qemu:///system`` in the dedicated dir pool
  ``portal-test``; everything they create carries a per-run prefix and is removed at the end
  of the session even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import libvirt
import pytest

from vms.hypervisor import Hypervisor, HypervisorError, get_hypervisor
from vms.hypervisor.libvirt_backend import LibvirtHypervisor

from .support import SYSTEM_POOL, SYSTEM_POOL_PATH, SYSTEM_URI, TEST_URI


@pytest.fixture(scope="session")
def test_driver_conn() -> Iterator[libvirt.virConnect]:
    """A connection to the test driver held for the whole session.

    The test driver frees its state when the last connection to it closes; holding one
    keeps objects made through a separate connection visible to the code under test.
    """
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


@pytest.fixture
def hv(test_driver_conn: libvirt.virConnect) -> LibvirtHypervisor:
    """A hypervisor on libvirt's test driver (fresh object, shared driver state)."""
    return LibvirtHypervisor(TEST_URI)


@pytest.fixture
def prefix() -> str:
    """A name prefix unique to this test."""
    return f"ut{uuid.uuid4().hex[:8]}-"


@pytest.fixture(scope="session")
def run_prefix() -> str:
    """A name prefix unique to this test run on the real hypervisor."""
    return f"dptest-{uuid.uuid4().hex[:6]}-"


def _cleanup(hv: Hypervisor, pool: str, prefix: str) -> None:
    for dom in hv.list_domains(prefix=prefix):
        hv.undefine(name=dom.name)
    for vol in hv.list_volumes(pool=pool, prefix=prefix):
        hv.delete_volume(pool=pool, name=vol.name)


@pytest.fixture(scope="session")
def system_hv(run_prefix: str) -> Iterator[Hypervisor]:
    """The real hypervisor with the ``portal-test`` pool ready; cleans up after the run."""
    hv = get_hypervisor(SYSTEM_URI)
    try:
        hv.ensure_pool(name=SYSTEM_POOL, path=SYSTEM_POOL_PATH)
    except HypervisorError as err:
        pytest.fail(f"libvirtd at {SYSTEM_URI} is not usable: {err.message}")
    yield hv
    _cleanup(hv, SYSTEM_POOL, run_prefix)
    # Bases made by the tests (qemu-img) live under the run prefix too.


@pytest.fixture
def system_names(system_hv: Hypervisor, run_prefix: str) -> Iterator[str]:
    """A prefix for one real-hypervisor test; its domains and volumes go away afterwards."""
    prefix = f"{run_prefix}{uuid.uuid4().hex[:4]}-"
    yield prefix
    _cleanup(system_hv, SYSTEM_POOL, prefix)


@pytest.fixture
def blank_base(system_hv: Hypervisor, system_names: str) -> Iterator[str]:
    """A 64 MiB blank qcow2 made with qemu-img in the test pool (SeaBIOS boots it to
    'No bootable device', which is enough to serve VNC)."""
    path = os.path.join(SYSTEM_POOL_PATH, f"{system_names}base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "64M"], check=True)
    yield path
    system_hv.delete_volume(pool=SYSTEM_POOL, name=os.path.basename(path))
    if os.path.exists(path):  # never seen by libvirt (no pool refresh happened)
        os.remove(path)
