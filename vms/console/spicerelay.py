"""The same-origin SPICE relay: a Channels consumer between spice-html5 and QEMU's SPICE
server, one WebSocket per SPICE channel.

Admission (vms.services.consoles.spice_channels): the main channel redeems the console
ticket and opens the session; later channels of that session present the same ticket and
join it while it is open. The relay then terminates the channel's SPICE link on both
sides (vms.console.spicelink): the browser encrypts its ticket with the relay's key and
QEMU gets the one-off password, so the password never leaves the server. A view-only
session gets no INPUTS channel (its link is refused) and its main channel's agent
messages (clipboard, file transfer) are dropped. A display channel reaches QEMU only with
its client's display init in hand, and QEMU's side of it closes only once QEMU has served
it (vms.console.spiceguest: QEMU 7.2's SPICE worker crashes otherwise).
"""

from __future__ import annotations

import asyncio
import logging

import redis
from channels.db import database_sync_to_async
from django.db import DatabaseError

from vms.console.relay import RELAY_NAME, ConsoleRelayConsumer, scope_knock
from vms.console.spiceguest import (
    SpiceGuestStream,
    link_refusal,
    spice_guest_auth,
    spice_guest_close,
    spice_guest_open,
)
from vms.console.spicelink import (
    CHANNEL_DISPLAY,
    LINK_OK,
    BrowserLink,
    LinkMess,
    SpiceLinkError,
)
from vms.console.spicemsg import (
    ClientFilter,
    DisplayInitGate,
    InputsFilter,
    MainInitWatcher,
    PassThrough,
    SpiceMessageError,
    client_filter_for,
)
from vms.models import ConsoleMode
from vms.services.consoles import (
    BINARY_PROTOCOL,
    CLOSE_FORBIDDEN,
    CLOSE_PROTOCOL,
    CLOSE_STOPPED,
    CLOSE_UNREACHABLE,
    ConsoleClosed,
    DisplayUnreachable,
    console_session_close,
    console_session_group,
)
from vms.services.consoles.spice_channels import (
    SpiceAdmission,
    spice_admit,
    spice_channel_tally,
    spice_channels_close,
    spice_channels_open,
)
from vms.services.desktops.events import desktop_group

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
# The least time between two key messages to QEMU. Its SPICE server puts each key's
# scancodes straight into the guest's PS/2 keyboard queue, which holds 16 bytes and drops
# what does not fit (a lost Shift release sticks; its VNC server spaces keys 10 ms apart,
# key-delay-ms). Keys that reach the relay in a burst (a paste, a stalled network) leave
# it no closer than this. 10 ms still lost two Shift presses in a full run, with guests
# under TCG whose vCPUs wait their turn on 2 cores: 25 ms lets such a guest fall about
# 250 ms behind before its queue overflows (a paste types some 10 characters a second).
KEY_GAP_S = 0.025


class SpiceRelayConsumer(ConsoleRelayConsumer):
    """One SPICE channel of one browser's console session (see the module docstring)."""

    admission: SpiceAdmission | None = None
    spice: SpiceGuestStream | None = None
    ready = False
    linking = False
    linked = False
    gate: DisplayInitGate | None = None
    refused_channels = 0
    tallied = (0, 0, 0)
    next_key_at = 0.0  # the event loop's time the next key message may go to QEMU

    async def connect(self) -> None:
        await self.accept(subprotocol=BINARY_PROTOCOL)
        self.knock = scope_knock(self.scope)
        try:
            admission = await database_sync_to_async(spice_admit)(
                knock=self.knock, relay=RELAY_NAME
            )
        except ConsoleClosed as refusal:
            await self.close(code=refusal.code, reason=refusal.reason)
            return
        self.admission = admission
        self.session_id = admission.session.pk
        self.desktop_id = str(admission.session.desktop_id)
        self.browser = BrowserLink()
        self.spice_filter: ClientFilter = PassThrough()
        self.watcher: MainInitWatcher | None = None
        await self.channel_layer.group_add(desktop_group(self.desktop_id), self.channel_name)
        await self.channel_layer.group_add(
            console_session_group(self.session_id), self.channel_name
        )
        self.tasks = [
            asyncio.create_task(self._watch_access()),
            asyncio.create_task(self._link_deadline()),
        ]

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.admission is None or not bytes_data:
            return
        try:
            if self.ready and isinstance(self.spice_filter, InputsFilter):
                await self._inputs_to_guest(self.spice_filter.pieces(bytes_data))
            elif self.ready:
                await self._to_guest(self.spice_filter.feed(bytes_data))
            elif self.gate is not None:
                await self._through_gate(self.admission, bytes_data)
            else:
                await self._linking(self.admission, bytes_data)
        except (SpiceLinkError, SpiceMessageError) as exc:
            await self._close(CLOSE_PROTOCOL, f"Console protocol error: {exc}")

    async def _inputs_to_guest(self, pieces: list[tuple[bool, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        for key, piece in pieces:
            if key:
                await asyncio.sleep(max(0.0, self.next_key_at - loop.time()))
                self.next_key_at = loop.time() + KEY_GAP_S
            await self._to_guest(piece)

    async def _linking(self, admission: SpiceAdmission, data: bytes) -> None:
        self.browser.receive(data)
        if not self.linking and self.browser.mess is not None:
            self.linking = True  # once: a refused link stays refused
            await self._link(admission, self.browser.mess)
        elif self.spice is not None and self.browser.ticket_received and not self.linked:
            self.linked = True
            await self._linked(admission, self.spice)

    async def _link(self, admission: SpiceAdmission, mess: LinkMess) -> None:
        refusal = link_refusal(admission, mess)
        if refusal is not None:
            self.refused_channels += 1
            log.info(
                "console session %s: SPICE channel %s refused", self.session_id, mess.channel_type
            )
            await self.send(bytes_data=self.browser.refuse(refusal[0]))
            await self._close(CLOSE_FORBIDDEN, refusal[1])
            return
        try:
            spice = await spice_guest_open(admission.session, mess)
        except (OSError, SpiceLinkError, TimeoutError, DisplayUnreachable) as exc:
            log.warning("console session %s: SPICE display unreachable: %s", self.session_id, exc)
            await self._close(CLOSE_UNREACHABLE, "The desktop's display did not answer.")
            return
        self.spice = spice
        self.guest = spice  # type: ignore[assignment]  # the writer `_to_guest` uses
        if spice.reply.error != LINK_OK:
            await self.send(bytes_data=self.browser.refuse(spice.reply.error))
            await self._close(CLOSE_UNREACHABLE, "The desktop's display refused this channel.")
            return
        await self.send(bytes_data=self.browser.reply(spice.reply))

    async def _linked(self, admission: SpiceAdmission, spice: SpiceGuestStream) -> None:
        """The browser's ticket is in. A display channel is told OK and waits for its
        display init before QEMU hears of it (vms.console.spiceguest); others link now."""
        if spice.link.mess.channel_type == CHANNEL_DISPLAY:
            await self.send(bytes_data=self.browser.result(LINK_OK))
            self.gate = DisplayInitGate(mini_header=spice.mini_header)
            await self._through_gate(admission, self.browser.leftover)
            return
        result = await self._auth(admission, spice)
        if result is None:
            return
        await self.send(bytes_data=self.browser.result(result))
        if result != LINK_OK:
            await self._close(CLOSE_UNREACHABLE, "The desktop's display refused the relay.")
            return
        await self._ready(admission, spice, self.browser.leftover)

    async def _through_gate(self, admission: SpiceAdmission, data: bytes) -> None:
        assert self.gate is not None and self.spice is not None
        first = self.gate.feed(data)
        if first is None:
            return
        result = await self._auth(admission, self.spice)
        if result is None:
            return
        if result != LINK_OK:
            await self._close(CLOSE_UNREACHABLE, "The desktop's display refused the relay.")
            return
        await self._ready(admission, self.spice, first)

    async def _auth(self, admission: SpiceAdmission, spice: SpiceGuestStream) -> int | None:
        try:
            return await spice_guest_auth(admission.session, spice)
        except (OSError, SpiceLinkError, TimeoutError, DisplayUnreachable) as exc:
            log.warning("console session %s: SPICE display unreachable: %s", self.session_id, exc)
            await self._close(CLOSE_UNREACHABLE, "The desktop's display did not answer.")
            return None

    async def _ready(
        self, admission: SpiceAdmission, spice: SpiceGuestStream, first: bytes
    ) -> None:
        self.gate = None
        self.spice_filter = client_filter_for(
            channel_type=spice.link.mess.channel_type,
            view_only=admission.session.mode == ConsoleMode.VIEW,
            mini_header=spice.mini_header,
        )
        if admission.main:
            self.watcher = MainInitWatcher(mini_header=spice.mini_header)
        self.ready = True
        self.tasks.append(asyncio.create_task(self._spice_to_browser(spice)))
        await self._to_guest(self.spice_filter.feed(first))

    async def _link_deadline(self) -> None:
        from django.conf import settings

        await asyncio.sleep(float(settings.CONSOLE_HANDSHAKE_TIMEOUT_S))
        if not self.ready:
            await self._close(CLOSE_PROTOCOL, "The SPICE link took too long.")

    async def _spice_to_browser(self, spice: SpiceGuestStream) -> None:
        assert spice.reader is not None
        try:
            if leftover := spice.take_leftover():
                await self._from_spice(leftover)
            while data := await spice.reader.read(READ_CHUNK):
                spice.heard = True
                await self._from_spice(data)
        except SpiceMessageError as exc:
            await self._close(CLOSE_PROTOCOL, f"Console protocol error: {exc}")
            return
        await self._close(CLOSE_STOPPED, "The desktop's display closed the connection.")

    async def _from_spice(self, data: bytes) -> None:
        # The grant goes in before MAIN_INIT reaches the browser: its next channels follow it.
        if self.watcher is not None and self.watcher.session_id is None:
            spice_session_id = self.watcher.feed(data)
            if spice_session_id is not None and self.admission is not None:
                await database_sync_to_async(spice_channels_open)(
                    session=self.admission.session,
                    knock=self.knock,
                    spice_session_id=spice_session_id,
                )
        await self._from_guest(data)

    async def disconnect(self, code: int) -> None:
        others = [t for t in getattr(self, "tasks", []) if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        # A cancelled task still waits on QEMU's stream until it next runs, and closing a
        # display channel QEMU has not served reads that stream too (a second reader
        # raises RuntimeError, and the session was then never closed).
        await asyncio.gather(*others, return_exceptions=True)
        if self.spice is not None:
            await spice_guest_close(self.spice)
        if self.admission is None or self.session_id is None:
            return
        await self.channel_layer.group_discard(desktop_group(self.desktop_id), self.channel_name)
        group = console_session_group(self.session_id)
        await self.channel_layer.group_discard(group, self.channel_name)
        if self.admission.main:
            await self._close_session(group)
        else:
            await self._tally()

    async def _close_session(self, group: str) -> None:
        assert self.session_id is not None
        to, back, dropped = await database_sync_to_async(spice_channels_close)(
            knock=self.knock, session_id=self.session_id
        )
        await database_sync_to_async(console_session_close)(
            session_id=self.session_id,
            reason=self.close_reason,
            bytes_to_guest=self.bytes_to_guest + to,
            bytes_from_guest=self.bytes_from_guest + back,
            dropped_messages=self._dropped() + dropped,
        )
        # The session's other channels go with it.
        ended = {"type": "console.session.ended", "code": 1000, "reason": "The console closed."}
        try:
            await self.channel_layer.group_send(group, ended)
        except (OSError, redis.RedisError) as exc:  # their next re-check closes them too
            log.warning(
                "console session %s: could not close its channels: %s", self.session_id, exc
            )

    def _dropped(self) -> int:
        return self.spice_filter.dropped_messages + self.refused_channels

    async def _tally(self) -> None:
        """Report this channel's counts since the last report to its session."""
        assert self.session_id is not None
        now = (self.bytes_to_guest, self.bytes_from_guest, self._dropped())
        delta = [current - before for current, before in zip(now, self.tallied, strict=True)]
        await database_sync_to_async(spice_channel_tally)(
            session_id=self.session_id,
            bytes_to_guest=delta[0],
            bytes_from_guest=delta[1],
            dropped_messages=delta[2],
        )
        self.tallied = now

    async def _watch_access(self) -> None:
        if self.admission is not None and not self.admission.main:
            self.tasks.append(asyncio.create_task(self._tally_periodically()))
        await super()._watch_access()

    async def _tally_periodically(self) -> None:
        from django.conf import settings

        while True:
            await asyncio.sleep(settings.CONSOLE_RECHECK_S)
            try:
                await self._tally()
            except (DatabaseError, OSError, redis.RedisError) as exc:
                # Kept for the next tally: `tallied` only moves once a report went through.
                log.warning("console session %s: channel tally failed: %s", self.session_id, exc)
