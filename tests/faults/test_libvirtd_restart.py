"""libvirtd restarts while desktops run, tasks are in flight and a console is open.

* Running guests keep running: the same QEMU process before and after.
* The portal reconnects by itself: this process's cached hypervisor object, the worker's
  and the relay's all work after the restart with no action of ours.
* Tasks that met the outage (a launch, a stop) retry and finish.
* An open console keeps working (the relay talks TCP to QEMU, not to libvirtd), and a new
  console session connects after the restart.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets

from tests.faults.support import libvirtd_start, libvirtd_stop, qemu_pid, wait_until
from tests.fixtures import wait_for_status
from tests.relay.conftest import ORIGIN, connect, mint_ticket, session_cookie
from vms.hypervisor import HypervisorError
from vms.hypervisor.libvirt_backend import LibvirtHypervisor
from vms.models import Desktop, DesktopStatus, Quota

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

UPDATE_REQUEST = b"\x03\x00" + struct.pack(">HHHH", 0, 0, 16, 16)  # full, 16x16 corner


@dataclass
class Events:
    """What the console thread and the test tell each other."""

    opened: threading.Event = field(default_factory=threading.Event)
    down: threading.Event = field(default_factory=threading.Event)
    restarted: threading.Event = field(default_factory=threading.Event)


async def _next_update(ws: Any) -> bytes:
    await ws.send(UPDATE_REQUEST)
    while True:
        data = await asyncio.wait_for(ws.recv(), 15)
        if data[:1] == b"\x00":  # FramebufferUpdate
            return bytes(data)


async def _hold_console(url: str, ticket: str, cookie: str, events: Events) -> dict[str, Any]:
    """Open a console and read screen updates until told to stop, counting those read while
    libvirtd was down; then read one more."""
    result: dict[str, Any] = {"during_outage": 0}
    try:
        async with websockets.connect(
            url,
            subprotocols=["binary", f"ticket.{ticket}"],
            origin=ORIGIN,
            additional_headers={"Cookie": cookie},
            open_timeout=10,
        ) as ws:
            assert await asyncio.wait_for(ws.recv(), 20) == b"RFB 003.008\n"
            await ws.send(b"RFB 003.008\n")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x01\x01"
            await ws.send(b"\x01")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x00\x00\x00"
            await ws.send(b"\x01")
            await asyncio.wait_for(ws.recv(), 10)  # ServerInit
            await _next_update(ws)
            events.opened.set()
            while not events.restarted.is_set():
                await _next_update(ws)
                if events.down.is_set():
                    result["during_outage"] += 1
                await asyncio.sleep(0.3)
            await _next_update(ws)
            result["after_restart"] = True
    except websockets.ConnectionClosed as closed:
        result["closed"] = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
    finally:
        events.opened.set()
    return result


def launch(client: Any, template: Any) -> str:
    response = client.post("/api/desktops/", {"template": template.pk}, format="json")
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


@pytest.mark.restarts_libvirtd
def test_libvirtd_restart_with_running_guests_tasks_in_flight_and_an_open_console(
    celery_worker, channels_relay, api_for, employee, demo_template, hypervisor
) -> None:
    Quota.objects.create(user=employee, max_desktops=5)
    client = api_for(employee)
    watched = wait_for_status(launch(client, demo_template), DesktopStatus.RUNNING)
    to_stop = wait_for_status(launch(client, demo_template), DesktopStatus.RUNNING)
    watched_qemu = qemu_pid(watched.domain_name)
    assert hypervisor.state(name=watched.domain_name) == "running"  # connection open

    ticket = mint_ticket(employee, watched)["ticket"]
    events = Events()
    console: dict[str, Any] = {}

    def hold() -> None:
        url = f"{channels_relay.url}/ws/console/{watched.pk}/"
        console.update(asyncio.run(_hold_console(url, ticket, session_cookie(employee), events)))

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert events.opened.wait(30) and "closed" not in console, console
        libvirtd_stop()
        events.down.set()
        # Work queued while libvirtd is away: a launch and a stop.
        launched_id = launch(client, demo_template)
        assert client.post(f"/api/desktops/{to_stop.pk}/stop/").status_code == 202
        # Let the worker meet the outage (the launch got as far as cloning, and failed).
        wait_until(
            lambda: (
                Desktop.objects.filter(pk=launched_id)
                .exclude(status=DesktopStatus.PROVISIONING, progress="queued")
                .exists()
            ),
            timeout=30,
            step=0.1,
            what="the worker to try the launch",
        )
        time.sleep(2)  # a retry or two against the stopped daemon
        for desktop_id, status in ((launched_id, "provisioning"), (to_stop.pk, "stopping")):
            desktop = Desktop.objects.get(pk=desktop_id)
            assert (desktop.status, desktop.last_error) == (status, ""), "gave up too soon"
    finally:
        libvirtd_start()
        events.restarted.set()
        holder.join(timeout=60)

    # Running guests kept running, and this process's hypervisor object reconnected.
    assert hypervisor.state(name=watched.domain_name) == "running"
    assert qemu_pid(watched.domain_name) == watched_qemu
    # The tasks that met the outage retried and finished.
    wait_for_status(launched_id, DesktopStatus.RUNNING, timeout=90)
    wait_for_status(to_stop.pk, DesktopStatus.STOPPED, timeout=90)
    assert hypervisor.state(name=to_stop.domain_name) == "shutoff"
    watched.refresh_from_db()
    assert watched.status == DesktopStatus.RUNNING
    # The open console went on working through the restart.
    assert console.get("after_restart") is True, console
    assert console["during_outage"] >= 1, console
    # A new console session connects (the relay's own libvirt connection reconnected).
    again = mint_ticket(employee, watched)["ticket"]
    outcome = connect(channels_relay.url, watched, again, cookie=session_cookie(employee))
    assert outcome.code is None and outcome.server_init, outcome


def test_a_stopped_daemon_is_a_reason_to_retry_not_to_give_up() -> None:
    """A stopped libvirtd removes its socket: "No such file or directory" there means
    "restarting", not a permanent failure of the request."""
    hypervisor = LibvirtHypervisor("qemu:///system?socket=/run/no-such-dir/libvirt-sock")
    with pytest.raises(HypervisorError) as failure:
        hypervisor.list_domains(prefix="x")
    assert failure.value.permanent is False
    assert "Failed to connect socket" in failure.value.message
