"""The SPICE relay between its two sockets: a channel whose reader still waits on QEMU
closes with no second reader; key messages reach QEMU spaced out."""

from __future__ import annotations

import asyncio
import itertools
import struct

from vms.console.spiceguest import SpiceGuestStream
from vms.console.spicelink import (
    CHANNEL_DISPLAY,
    CHANNEL_INPUTS,
    LINK_OK,
    GuestLinkClient,
    LinkMess,
)
from vms.console.spicemsg import client_filter_for
from vms.console.spicerelay import KEY_GAP_S, SpiceRelayConsumer
from vms.hypervisor.types import ConsoleEndpoint, GraphicsType


def _mini(kind: int, body: bytes) -> bytes:
    return struct.pack("<HI", kind, len(body)) + body


async def test_closing_a_display_channel_qemu_has_not_served_while_its_reader_waits() -> None:
    """A linked display channel that QEMU has not served yet is heard out before it closes
    (vms/console/spiceguest.py); the relay's own reader of that stream must be gone first."""

    async def silent_qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)  # never serves the channel, then hangs up
        writer.close()

    server = await asyncio.start_server(silent_qemu, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    link = GuestLinkClient(LinkMess(0, CHANNEL_DISPLAY, 0, (), (), b""))
    link.result = LINK_OK
    endpoint = ConsoleEndpoint(type=GraphicsType.spice, host="127.0.0.1", port=port, tls_port=None)
    spice = SpiceGuestStream(link, endpoint, reader=reader, writer=writer)
    assert spice.must_be_heard

    relay = SpiceRelayConsumer()
    relay.spice = spice
    relay.tasks = [asyncio.create_task(relay._spice_to_browser(spice))]
    await asyncio.sleep(0.05)  # the relay's reader now waits on QEMU's stream
    await relay.disconnect(1000)

    assert relay.tasks[0].cancelled()
    assert writer.is_closing()
    server.close()
    await server.wait_closed()


async def test_keys_reach_qemu_spaced_out_however_they_arrive() -> None:
    """A paste that reaches the relay in one burst still reaches QEMU one key message per
    KEY_GAP_S: QEMU's SPICE server queues no keys of its own, and the guest's PS/2 queue
    drops what overflows (a lost Shift release sticks). Mouse messages are not held."""
    arrivals: list[tuple[float, bytes]] = []

    async def qemu(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            arrivals.append((asyncio.get_running_loop().time(), data))
        writer.close()

    server = await asyncio.start_server(qemu, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    endpoint = ConsoleEndpoint(type=GraphicsType.spice, host="127.0.0.1", port=port, tls_port=None)
    link = GuestLinkClient(LinkMess(0, CHANNEL_INPUTS, 0, (), (), b""))
    relay = SpiceRelayConsumer()
    relay.admission = object()  # type: ignore[assignment]  # admitted: only `ready` matters
    relay.guest = SpiceGuestStream(link, endpoint, reader=reader, writer=writer)  # type: ignore[assignment]
    relay.spice_filter = client_filter_for(channel_type=CHANNEL_INPUTS, view_only=False,
                                           mini_header=True)  # fmt: skip
    relay.ready = True

    keys = [_mini(101 + n % 2, struct.pack("<I", 0x2A)) for n in range(8)]  # Shift down, up
    motion = _mini(111, b"\0" * 10)
    burst = motion + b"".join(keys) + motion
    await relay.receive(bytes_data=burst[:15])  # and cut inside a message
    await relay.receive(bytes_data=burst[15:])
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)
    server.close()
    await server.wait_closed()

    assert b"".join(data for _, data in arrivals) == burst  # nothing lost or reordered
    key_ends = [len(motion) + len(key) * (n + 1) for n, key in enumerate(keys)]
    times = [_arrived(arrivals, end) for end in key_ends]
    assert all(b - a >= KEY_GAP_S * 0.9 for a, b in itertools.pairwise(times))
    assert _arrived(arrivals, len(motion)) <= times[0]  # not held behind a key gap


def _arrived(arrivals: list[tuple[float, bytes]], end: int) -> float:
    """When QEMU's side had read the first `end` bytes."""
    seen = 0
    for at, data in arrivals:
        seen += len(data)
        if seen >= end:
            return at
    raise AssertionError(f"only {seen} bytes arrived")
