"""Running the suite in parallel (pytest-xdist; `scripts/test` passes `-n 4`).

Each xdist worker has its own test database, Redis database, libvirt name prefix, storage
pool and backup folder (portal/test_settings.py) and its own servers on free ports. What
stays shared is the machine, so:

* A module's tests run on one worker (module-scoped fixtures are made once; modules with
  fixed names of their own, such as the tmpfs pool of tests/faults/test_storage_pool.py or
  the egress test's service namespace, never run twice at once; the bench's tests, which
  share the bench's database, are one group), the slowest modules first.
  Lab hosts are the worker's own (tests/fleet/conftest.py `lab_name`: `laba` is `laba2`
  on gw2), so the lab's modules spread over the workers too.
* A test that restarts the machine's libvirtd (marker `restarts_libvirtd`) runs while no
  other test runs: each test holds a machine-wide lock, shared, for its whole run (set-up
  and tear-down included); that test holds it exclusively (`libvirtd_restart_allowed`
  tells tests/faults/support.py so). A second lock file makes the waiting writer go first,
  so that the readers of the other workers cannot starve it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

LOCK_DIR = Path(os.environ.get("PORTAL_TEST_LOCK_DIR", "/var/lock"))
# The slowest modules first (measured with --durations=0, see README "Tests"), so that
# no long one starts last; the rest follow in the order of collection. A stale entry only
# costs time.
SLOWEST_FIRST = (
    "tests/fleet/test_recovery.py",
    "tests/fleet/test_egress_lab.py",
    "tests/relay/test_spice_guest.py",
    "tests/fleet/test_drain.py",
    "tests/fleet/test_networks_lab.py",
    "tests/relay/test_spice_proxy.py",
    "bench",
    "tests/browser/test_disks_ux.py",
    "tests/fleet/test_migration.py",
    "tests/browser/test_admin_ux.py",
    "tests/test_platform.py",
    "tests/fleet/test_spice_proxy_admission.py",
)

_exclusive = False


def libvirtd_restart_allowed() -> bool:
    """Whether the running test holds the machine's libvirtd exclusively."""
    return _exclusive


def group_of(nodeid: str) -> str:
    """The test's group: its module; the bench's tests are one (they share the bench's
    database, Redis database, name prefix and pool: bench/settings.py)."""
    path = nodeid.split("::", 1)[0]
    return "bench" if path.startswith("bench/") else path


def _rank(group: str) -> int:
    return SLOWEST_FIRST.index(group) if group in SLOWEST_FIRST else len(SLOWEST_FIRST)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first: xdist hands the groups out in the order their first
    tests come (after pytest-django's ordering, which this keeps within a module)."""
    items.sort(key=lambda item: _rank(group_of(item.nodeid)))


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole modules to a worker, in the order of collection (xdist's own `loadscope`
    would reorder them by size, `loadgroup` cannot tag tests under pytest 9.2)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # As xdist's, but every item of the group: schemathesis gives all its cases
            # one id (tests/security/test_api_fuzz.py), of which xdist would run one.
            scope, work_unit = self.workqueue.popitem(last=False)
            self.assigned_work.setdefault(node, {})[scope] = work_unit
            collection = self.registered_collections[node]
            node.send_runtest_some(
                [i for i, nodeid in enumerate(collection) if work_unit.get(nodeid) is False]
            )

    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


@contextmanager
def _locked(*, exclusive: bool) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with (
        open(LOCK_DIR / "dp-libvirtd.lock", "a") as main,
        open(LOCK_DIR / "dp-libvirtd.turnstile", "a") as turnstile,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _exclusive
    exclusive = item.get_closest_marker("restarts_libvirtd") is not None
    with _locked(exclusive=exclusive):
        _exclusive = exclusive
        try:
            return (yield)
        finally:
            _exclusive = False
