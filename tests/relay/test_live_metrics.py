"""The live feed's monitoring values over a real WebSocket: a page gets its own desktops'
values and the ones it may watch; another user's desktop's values never reach it, even
when it asks to watch that desktop; only admins get hosts' values."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics import helpers
from tests.metrics.helpers import stats_for
from tests.relay.conftest import ORIGIN, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


async def received(relay, cookie: str, *, watch: list[str], record) -> list[dict]:
    """Everything the feed sends `user` within 2 s of one recorded pass."""
    async with websockets.connect(f"{relay.url}/ws/desktops/", origin=ORIGIN,
                                  additional_headers={"Cookie": cookie}) as ws:  # fmt: skip
        await ws.send(json.dumps({"watch": watch}))
        await asyncio.sleep(0.5)  # the feed has joined its groups
        await asyncio.to_thread(record)
        messages = []
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
        except TimeoutError:
            return messages


def test_values_reach_only_those_who_may_see_them(
    channels_relay, fake_host, fake_template, employee, other_employee, helpdesk_user, admin_user_
):
    mine = make_desktop(employee, fake_template, domain_name="dpm-live-1")
    theirs = make_desktop(other_employee, fake_template, domain_name="dpm-live-2")

    def record() -> None:
        helpers.record(
            fake_host, timezone.now(), stats_for(mine, cpu_s=1), stats_for(theirs, cpu_s=1)
        )

    def seen(user, watch) -> tuple[set[str], int]:
        messages = asyncio.run(
            received(channels_relay, session_cookie(user), watch=watch, record=record)
        )
        ids = {
            m["desktop_id"] for msg in messages if msg["kind"] == "metrics" for m in msg["metrics"]
        }
        return ids, sum(msg["kind"] == "host_metrics" for msg in messages)

    assert seen(employee, [str(theirs.pk)]) == ({str(mine.pk)}, 0)  # asked for theirs: no
    assert seen(helpdesk_user, [str(theirs.pk)]) == ({str(theirs.pk)}, 0)
    assert seen(admin_user_, []) == (set(), 1)
