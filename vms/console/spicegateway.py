"""A SPICE channel's link in the websockify gateway (blocking, one process per socket).

The same steps as the Channels relay (vms.console.spicerelay): read the browser's link
message, refuse what the session may not link, link the channel with QEMU using the one-off
password, give the browser QEMU's reply with the relay's own key, read (and drop) its
ticket, and tell it QEMU's link result; a display channel is told OK at once and reaches
QEMU with its display init (vms.console.spiceguest). Then the gateway's select() loop
carries the bytes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from vms.console.spiceguest import (
    SpiceGuestSocket,
    link_refusal,
    spice_guest_auth_blocking,
    spice_guest_close_blocking,
    spice_guest_open_blocking,
)
from vms.console.spicelink import CHANNEL_DISPLAY, LINK_OK, BrowserLink, LinkMess, SpiceLinkError
from vms.console.spicemsg import (
    ClientFilter,
    DisplayInitGate,
    MainInitWatcher,
    client_filter_for,
)
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

    spice: SpiceGuestSocket
    guest_leftover: bytes
    sent_first: int  # the browser's bytes after its ticket (a display init...), sent on
    client_filter: ClientFilter
    watcher: MainInitWatcher | None

    @property
    def guest(self) -> socket.socket:
        assert self.spice.sock is not None
        return self.spice.sock


def spice_link_blocking(
    *,
    admission: SpiceAdmission,
    receive: Callable[[], bytes],
    send: Callable[[bytes], None],
) -> LinkedChannel:
    """Link one channel; `receive` gives the browser's next message, `send` sends one.
    A display channel is told OK first and reaches QEMU with its display init in hand."""
    browser = BrowserLink()
    while browser.mess is None:
        browser.receive(receive())
    refusal = link_refusal(admission, browser.mess)
    if refusal is not None:
        send(browser.refuse(refusal[0]))
        raise SpiceChannelRefused(CLOSE_FORBIDDEN, refusal[1])
    spice = _open(admission, browser.mess)
    try:
        if spice.reply.error != LINK_OK:
            send(browser.refuse(spice.reply.error))
            raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display refused this channel.")
        send(browser.reply(spice.reply))
        while not browser.ticket_received:
            browser.receive(receive())
        first = browser.leftover
        if browser.mess.channel_type == CHANNEL_DISPLAY:
            send(browser.result(LINK_OK))
            first = _display_init(spice, first, receive)
            result = _auth(admission, spice)
        else:
            result = _auth(admission, spice)
            send(browser.result(result))
        if result != LINK_OK:
            raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display refused the relay.")
    except BaseException:
        spice_guest_close_blocking(spice, heard=False)
        raise
    client_filter = client_filter_for(
        channel_type=browser.mess.channel_type,
        view_only=admission.session.mode == ConsoleMode.VIEW,
        mini_header=spice.mini_header,
    )
    # At once: a display channel QEMU has opened must get its init (vms.console.spiceguest).
    to_guest = client_filter.feed(first)
    assert spice.sock is not None
    try:
        spice.sock.sendall(to_guest)
    except OSError as exc:
        spice_guest_close_blocking(spice, heard=False)
        raise ConsoleClosed(
            CLOSE_UNREACHABLE, "The desktop's display closed the connection."
        ) from exc
    return LinkedChannel(
        spice=spice,
        guest_leftover=spice.take_leftover(),
        sent_first=len(to_guest),
        client_filter=client_filter,
        watcher=MainInitWatcher(mini_header=spice.mini_header) if admission.main else None,
    )


def _open(admission: SpiceAdmission, mess: LinkMess) -> SpiceGuestSocket:
    try:
        return spice_guest_open_blocking(admission.session, mess)
    except (OSError, SpiceLinkError, DisplayUnreachable) as exc:
        raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display did not answer.") from exc


def _auth(admission: SpiceAdmission, spice: SpiceGuestSocket) -> int:
    try:
        return spice_guest_auth_blocking(admission.session, spice)
    except (OSError, SpiceLinkError, DisplayUnreachable) as exc:
        raise ConsoleClosed(CLOSE_UNREACHABLE, "The desktop's display did not answer.") from exc


def _display_init(spice: SpiceGuestSocket, first: bytes, receive: Callable[[], bytes]) -> bytes:
    gate = DisplayInitGate(mini_header=spice.mini_header)
    complete = gate.feed(first)
    while complete is None:
        complete = gate.feed(receive())
    return complete
