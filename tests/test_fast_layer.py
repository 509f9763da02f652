"""The fast layer (tests/fast_layer.py) cannot lie: tests are marked fast from the fixtures
they use, and while a fast test runs, the real libvirtd and server processes are refused
in it and in the Python processes it starts, with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fast_guard.guard import REPORT_ENV, SlowPartUsed, server_in
from tests.fast_layer import slow_parts
from vms.hypervisor import get_hypervisor

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def refusals() -> Iterator[Path]:
    """The guard's report for this test; emptied at the end, as these refusals are the
    point of the test (the guard would otherwise fail it)."""
    report = Path(os.environ[REPORT_ENV])
    yield report
    report.write_text("")


class Stub:
    def __init__(self, fixturenames: list[str], markers: tuple[str, ...] = ()) -> None:
        self.fixturenames = fixturenames
        self.markers = markers

    def get_closest_marker(self, name: str) -> Any:
        return name if name in self.markers else None


def test_a_test_is_slow_by_any_slow_fixture_in_its_closure_or_by_its_markers(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("fast") is not None  # this one uses nothing slow
    # demo_template needs local_host: the closure (what pytest gives) names both.
    assert slow_parts(Stub(["db", "employee", "demo_template", "local_host"])) == [  # type: ignore[arg-type]
        "demo_template",
        "local_host",
    ]
    assert slow_parts(Stub(["db", "lab_host_in_portal"])) == ["lab_host_in_portal"]  # type: ignore[arg-type]
    assert slow_parts(Stub(["db", "fake_host"], ("servers",))) == ["@servers"]  # type: ignore[arg-type]
    assert slow_parts(Stub(["db", "fake_host", "employee"])) == []  # type: ignore[arg-type]


def test_the_real_libvirtd_is_refused_even_when_the_caller_swallows_it(
    refusals: Path,
) -> None:
    with pytest.raises(
        SlowPartUsed, match="a fast test used a libvirt connection to 'qemu:///system'"
    ):
        get_hypervisor("qemu:///system").list_domains(prefix="none-")
    assert "qemu:///system" in refusals.read_text()  # the teardown would fail the test
    get_hypervisor("test:///default").list_domains(prefix="none-")  # the test driver is fine


def test_servers_are_refused_here_and_in_the_processes_a_test_starts(refusals: Path) -> None:
    with pytest.raises(SlowPartUsed, match="starts celery"):
        subprocess.run([sys.executable, "-m", "celery", "--version"], check=False)
    # A Python child refuses libvirtd too, and reports it to this test.
    connect = "import libvirt; libvirt.open('qemu:///system')"
    child = subprocess.run([sys.executable, "-c", connect], capture_output=True, text=True)
    assert child.returncode != 0 and "SlowPartUsed" in child.stderr
    # A server started behind a shell stops as it starts.
    shell = subprocess.run(
        ["sh", "-c", f"{sys.executable} -m daphne --help"], capture_output=True, text=True
    )
    assert shell.returncode == 3 and "a fast test used a process that runs daphne" in shell.stderr
    assert len(refusals.read_text().splitlines()) == 3


def test_what_counts_as_a_server() -> None:
    assert server_in([sys.executable, "manage.py", "consoleproxy", "--listen", "x"])
    assert server_in([sys.executable, "manage.py", "check"]) == ""
    assert server_in(["virsh", "-c", "qemu:///system", "nodeinfo"])
    assert server_in(["virsh", "-c", "test:///default", "nodeinfo"]) == ""
    assert server_in("qemu-system-x86_64 -version")
    assert server_in(["flock", "/var/lock/dp-net.lock", "scripts/lab-host", "up", "laba"])
    assert server_in(["qemu-img", "info", "x.qcow2"]) == ""
