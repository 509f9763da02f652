"""A SPICE channel's link in the websockify gateway (blocking, one process per socket).

The same steps as the Channels relay (vms.console.spicerelay): read the browser's link
message, refuse what the session may not link, link the channel with QEMU using the one-off
password, give the browser QEMU's reply with the relay's own key, read (and drop) its
ticket, and tell it QEMU's link result. Then the gateway's select() loop carries the bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from vms.console.spiceguest import link_refusal, spice_guest_connect_blocking
from vms.console.spicelink import LINK_OK, BrowserLink, SpiceLinkError
from vms.console.spicemsg import ClientFilter, MainInitWatcher, client_filter_for
from vms.models import ConsoleMode
from vms.services.consoles import (
    CLOSE_FORBIDDEN,
    CLOSE_UNREACHABLE,
    ConsoleClosed,
    DisplayUnreachable,
)
from vms.services.consoles.spice_channels import SpiceAdmission


class SpiceChannelRefused(ConsoleClosed):
    """The session may not link this channel (counted as a dropped message)."""


@dataclass
class LinkedChannel:
    """A channel linked on both sides, and how the gateway carries it."""

    guest: socket.socket
    guest_leftover: bytes
    browser_leftover: bytes
    client_filter: ClientFilter
    watcher: MainInitWatcher | None


def spice_link_blocking(
    *,
    admission: SpiceAdmission,
    receive: Callable[[], bytes],
    send: Callable[[bytes], None],
) -> LinkedChannel:
    """Link one channel; `receive` gives the browser's next message, `send` sends one."""
    browser = BrowserLink()
    while browser.mess is None:
        browser.receive(receive())
    refusal = link_refusal(admission, browser.mess)
    if refusal is not None:
        send(browser.refuse(refusal[0]))
        raise SpiceChannelRefused(CLOSE_FORBIDDEN, refusal[1])
    try:
        guest, linked = spice_guest_connect_blocking(admission.session, browser.mess)
    except (OSError, SpiceLinkError, DisplayUnreachable) as exc:
        raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display did not answer.") from exc
    if linked.reply.error != LINK_OK or linked.result is None:
        guest.close()
        send(browser.refuse(linked.reply.error))
        raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display refused this channel.")
    send(browser.reply(linked.reply))
    while not browser.ticket_received:
        browser.receive(receive())
    send(browser.result(linked.result))
    if linked.result != LINK_OK:
        guest.close()
        raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display refused the relay.")
    return LinkedChannel(
        guest=guest,
        guest_leftover=linked.leftover,
        browser_leftover=browser.leftover,
        client_filter=client_filter_for(
            channel_type=browser.mess.channel_type,
            view_only=admission.session.mode == ConsoleMode.VIEW,
            mini_header=linked.mini_header,
        ),
        watcher=MainInitWatcher(mini_header=linked.mini_header) if admission.main else None,
    )
