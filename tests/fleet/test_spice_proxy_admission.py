"""The SPICE proxy's admissions: one user's share of its connections, and a hypervisor that
stops answering (a SIGSTOPped libvirtd on a lab host) holds up only its own desktops."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.fixtures import make_desktop
from tests.fleet.conftest import lab_dir
from tests.relay.test_spice_proxy import (
    FILE_TARGET,
    connect_request,
    download_vv,
    read_answer,
    spice_desktop,
    token_of,
    wait_until,
)
from tests.servers import free_port, running, var_path
from vms.hypervisor import ConsoleEndpoint, GraphicsType
from vms.models import ConsoleSession, Host
from vms.services.consoles.spiceproxy import spice_grant_issue

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
PROXY_LOG = var_path("test-spiceproxy-admission.log")
PER_USER = 2


@pytest.fixture
def capped_proxy(settings: Any) -> Iterator[int]:
    """`manage.py spiceproxy` allowing each user PER_USER connections."""
    port = free_port()
    command = [sys.executable, "manage.py", "spiceproxy", "--listen", f"127.0.0.1:{port}"]
    with running(
        command,
        port=port,
        log_name="test-spiceproxy-admission.log",
        LOG_LEVEL="INFO",
        CONSOLE_HANDSHAKE_TIMEOUT_S="30",
        SPICE_PROXY_MAX_CONNECTIONS_PER_USER=str(PER_USER),
    ):
        settings.SPICE_PROXY_URL, settings.SPICE_TLS_DIR = f"http://127.0.0.1:{port}", ""
        yield port


@contextmanager
def stopped_libvirtd(name: str) -> Iterator[None]:
    """The lab host's libvirtd stopped with SIGSTOP (its kernel still accepts connections,
    nothing answers them) until the block ends."""
    pid = int((lab_dir(name) / "run" / "libvirtd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def send_connect(port: int, target: str, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(connect_request(target, token))
    return sock


def admitting(user_id: int) -> int:
    return PROXY_LOG.read_text().count(f"admitting a connection of user {user_id} ")


def test_a_silent_hypervisor_delays_only_its_desktops_and_a_user_gets_their_share(
    capped_proxy,
    lab_host_in_portal,
    local_host,
    celery_worker,
    api_for,
    employee,
    other_employee,
    demo_template,
) -> None:
    Host.objects.filter(pk=lab_host_in_portal.pk).update(enabled=False)  # theirs goes local
    theirs = spice_desktop(api_for(other_employee), demo_template)
    assert theirs.host == local_host
    # The employee's desktop runs on the lab host (a row: the proxy's libvirt call never
    # gets an answer, so no guest is needed behind it).
    mine = make_desktop(employee, demo_template, name="mine", status="running")
    mine.host = lab_host_in_portal
    mine.save(update_fields=["host"])
    session = ConsoleSession.objects.create(
        desktop=mine, user=employee, mode="full", relay="spice-file"
    )
    endpoint = ConsoleEndpoint(GraphicsType.spice, lab_host_in_portal.console_address, 5900, None)
    token = spice_grant_issue(session=session, endpoint=endpoint)

    with stopped_libvirtd(lab_host_in_portal.name):
        # Two connections of the employee's file: the first claims the set and waits on
        # the silent libvirtd, the second waits for the claim.
        stuck = [send_connect(capped_proxy, FILE_TARGET, token) for _ in range(PER_USER)]
        try:
            wait_until(lambda: admitting(employee.pk) == PER_USER, timeout=30)
            # Beyond the employee's share: refused at once, saying why.
            started = time.monotonic()
            with send_connect(capped_proxy, FILE_TARGET, token) as third:
                status, answer = read_answer(third)
            assert status == 429 and f"You have {PER_USER} SPICE connections open" in answer
            assert time.monotonic() - started < 5
            # Another user, another desktop: in at once, while the lab host is silent.
            vv = download_vv(other_employee, theirs)
            started = time.monotonic()
            with send_connect(capped_proxy, FILE_TARGET, token_of(vv)) as other:
                status, answer = read_answer(other)
                assert status == 200, answer
                admitted_in = time.monotonic() - started
            assert admitted_in < 10, admitted_in
            for sock in stuck:  # still waiting on the silent hypervisor
                sock.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    sock.recv(1)
        finally:
            for sock in stuck:
                sock.close()
    # The hypervisor answers again: the stuck claim ends (its domain does not exist there).
    wait_until(lambda: "refused 502" in PROXY_LOG.read_text(), timeout=60)
    open_theirs = ConsoleSession.objects.filter(desktop=theirs, ended_at=None)
    wait_until(lambda: not open_theirs.exists(), timeout=60)
    print(f"another desktop admitted in {admitted_in:.2f} s while the lab host was stopped")
