"""The fast layer: every test that uses no server, no guest and no browser is marked `fast`
(`scripts/test --fast` runs only those). The marker is derived from the fixtures a test
really uses (its fixture closure, so a fixture that needs `local_host` counts too) and
from its markers, never written by hand, so it cannot go stale; and while a fast test runs,
tests/fast_guard refuses the slow parts (in the processes it starts too), so a test that
reaches them without their fixture fails rather than hiding in the fast layer.

PostgreSQL and Redis (the test database) and libvirt's in-process `test://` driver are
allowed in the fast layer.

A plugin (registered by tests/conftest.py) rather than conftest hooks: its hooks and its
autouse fixture apply to bench/ too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fast_guard import guard

GUARD_DIR = Path(guard.__file__).resolve().parent

# The fixtures that start a server, a guest or a browser, or reach the real libvirtd (or a
# lab host). Fixtures built on them (demo_template, running_guest, spice_desktop, ...) count
# through the closure.
SLOW_FIXTURES = frozenset({
    # servers: a real Celery worker, daphne, the console relays, the SPICE proxy, Redis
    "celery_worker", "portal_url", "channels_relay", "gateway_relay", "relay",
    "spice_proxy", "capped_proxy", "tls_proxy", "start_worker", "private_redis",
    "live_server",
    # the real libvirtd (qemu:///system) and its QEMU guests
    "local_host", "demo_template", "hypervisor", "faulty_host", "system_hv",
    "system_names", "blank_base", "qemu_vnc", "qemu_spice",
    # lab hosts (second libvirtds in network namespaces) and what watches their network
    "lab", "two_hosts", "capture",
    # Chromium through Playwright
    "browser", "page",
})  # fmt: skip
SLOW_PREFIXES = ("lab_",)  # lab_hosts, lab_host_joined, lab_host_in_portal
# Markers that make a test slow whatever its fixtures: tests that start a server or reach
# libvirtd themselves, and the API fuzzing (900 generated requests, half the fast layer's
# time on its own).
SLOW_MARKERS = ("libvirt", "browser", "servers", "fuzz")


def slow_parts(item: pytest.Item) -> list[str]:
    """The fixtures and markers that keep `item` out of the fast layer."""
    names = getattr(item, "fixturenames", ())
    found = [n for n in names if n in SLOW_FIXTURES or n.startswith(SLOW_PREFIXES)]
    return found + [f"@{m}" for m in SLOW_MARKERS if item.get_closest_marker(m)]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        slow = slow_parts(item)
        if item.get_closest_marker("fast") is not None:
            raise pytest.UsageError(
                f"{item.nodeid}: the fast marker is derived (tests/fast_layer.py), "
                f"not written by hand; this test uses {slow or 'nothing slow'}"
            )
        if not slow:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(autouse=True)
def _fast_layer_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """While a fast test runs (its function-scoped fixtures too), refuse the slow parts in
    this process and in the Python processes it starts; fail it if any was reached, even
    when the code under test swallowed the refusal."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    handle, report = tempfile.mkstemp(prefix="fast-guard-", suffix=".txt")
    os.close(handle)
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", guard.REPORT_ENV)}
    os.environ[guard.REPORT_ENV] = report
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD_DIR), saved["PYTHONPATH"]]))
    undo = guard.install() + _guard_cached_connections()
    try:
        yield
    finally:
        guard.uninstall(undo)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reached = Path(report).read_text()
        os.unlink(report)
    if reached:
        pytest.fail(f"this test is marked fast but reached slow parts:\n{reached}", pytrace=False)


def _guard_cached_connections() -> guard.Undo:
    """A libvirt connection that an earlier (slow) test of this process opened is reused
    without libvirt.open: refuse those too."""
    from vms.hypervisor.connection import LibvirtConnection

    original = LibvirtConnection.get

    def get(self: LibvirtConnection) -> Any:
        if not guard.uri_allowed(self.uri):
            raise guard.refuse(f"a libvirt connection to {self.uri!r}")
        return original(self)

    LibvirtConnection.get = get  # type: ignore[method-assign]
    return [(LibvirtConnection, "get", original)]
