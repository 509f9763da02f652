"""Lab hosts (scripts/lab-host): second libvirtds on this machine, each in a network
namespace of its own. Every host a test brings up is brought down, with its namespace, veth
and daemons, when the test's scope ends."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser

from tests.browser.conftest import chromium, portal_url  # noqa: F401
from tests.fixtures import running_worker
from tests.relay.conftest import channels_relay, gateway_relay, relay  # noqa: F401
from vms.hypervisor import get_hypervisor
from vms.hypervisor.kvmprobe import run_kvm_probe
from vms.models import Host
from vms.services.fleet.membership import host_register
from vms.settings_access import name_prefix

ROOT = Path(__file__).resolve().parents[2]
LAB_HOST = ROOT / "scripts" / "lab-host"
# A host coming up starts three daemons and probes QEMU; with four xdist workers bringing
# up hosts at once on two cores this took over 120 s on a fresh clone.
LAB_HOST_TIMEOUT_S = 300


LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/desktop-portal/lab"))


def lab_name(name: str) -> str:
    """The lab host (scripts/lab-host's NAME) behind the tests' host `name`: under xdist,
    each worker's own (`laba` is `laba2` on worker gw2), so that the lab's modules run on
    several workers at once; the portal's host keeps the name (each worker has its own
    database)."""
    return name + os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")


def lab_namespace(name: str) -> str:
    return f"dplab-{lab_name(name)}"


def lab_dir(name: str) -> Path:
    """The lab host's state directory (its private /run/libvirt, /var/lib/libvirt...)."""
    return LAB_DIR / lab_name(name)


def lab_host(command: str, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_HOST), command, lab_name(name)],
        capture_output=True,
        text=True,
        timeout=LAB_HOST_TIMEOUT_S,
    )


@pytest.fixture
def lab_hosts() -> Iterator[Callable[[str], str]]:
    """`up(name)` brings a lab host up and returns its URI; all go down at the end."""
    started: list[str] = []

    def up(name: str) -> str:
        done = lab_host("up", name)
        assert done.returncode == 0, done.stderr
        started.append(name)
        return done.stdout.strip()

    yield up
    failures = [lab_host("down", name) for name in reversed(started)]
    assert all(f.returncode == 0 for f in failures), [f.stderr for f in failures]


# The Celery worker of each joined lab host, by host name (a test may silence one).
LAB_WORKERS: dict[str, subprocess.Popen[bytes]] = {}


@pytest.fixture
def lab_host_joined(
    lab_hosts: Callable[[str], str], celery_worker: Any
) -> Iterator[Callable[[str], Host]]:
    """`join(name)`: lab host `name` up and registered in the portal (capacity read from
    it, its storage pool on the shared directory) with a Celery worker of its own for its
    queue (in LAB_WORKERS), as `scripts/lab-host join` does. Their guests and workers go
    at the end."""
    joined: list[Host] = []
    with ExitStack() as workers:

        def join(name: str) -> Host:
            uri = lab_hosts(name)
            address = urlsplit(uri).hostname or ""
            # Its QEMU shares this machine's kernel: the machine's own probe decides.
            virt_type = "kvm" if run_kvm_probe() else "qemu"
            host = host_register(name=name, uri=uri, console_address=address, virt_type=virt_type)
            assert host.last_check_ok, host.last_check_error
            worker = f"lab{name}{os.getpid()}@{socket.gethostname()}"
            LAB_WORKERS[name] = workers.enter_context(
                running_worker(queues=f"{host.queue_name},{host.long_queue_name}", name=worker)
            )
            joined.append(host)
            return host

        yield join
        for host in joined:
            LAB_WORKERS.pop(host.name, None)
    for host in joined:
        hypervisor = get_hypervisor(host.uri)
        for domain in hypervisor.list_domains(prefix=name_prefix()):
            hypervisor.undefine(name=domain.name)


@pytest.fixture
def lab_host_in_portal(lab_host_joined: Callable[[str], Host]) -> Host:
    """Lab host 'laba', joined to the portal (see `lab_host_joined`)."""
    return lab_host_joined("laba")


@pytest.fixture
def two_hosts(local_host: Host, lab_host_joined: Callable[[str], Host]) -> tuple[Host, Host]:
    """Lab hosts 'laba' and 'labb' joined; the machine's own host takes no desktops."""
    Host.objects.filter(pk=local_host.pk).update(enabled=False)
    return lab_host_joined("laba"), lab_host_joined("labb")


@pytest.fixture(scope="module")
def browser(portal_url: str) -> Iterator[Browser]:  # noqa: F811
    """Chromium for one module only: while Playwright's loop runs in this thread, the
    fleet's other tests could not call the services (their live push refuses to run)."""
    with chromium(portal=portal_url) as launched:
        yield launched
