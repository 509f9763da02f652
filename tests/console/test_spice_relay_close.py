"""The SPICE relay closes a channel whose reader still waits on QEMU (no second reader)."""

from __future__ import annotations

import asyncio

from vms.console.spiceguest import SpiceGuestStream
from vms.console.spicelink import CHANNEL_DISPLAY, LINK_OK, GuestLinkClient, LinkMess
from vms.console.spicerelay import SpiceRelayConsumer
from vms.hypervisor.types import ConsoleEndpoint, GraphicsType


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
