"""Live page updates, the owner's notice, the console cap, consoles closing when the
desktop stops, and the SPICE file flow - against real servers and real guests."""

from __future__ import annotations

import asyncio
import configparser
import json

import pytest
import websockets
from django.test import Client

from tests.fixtures import make_desktop, wait_for_status
from tests.relay.conftest import ORIGIN, mint_ticket, rfb_handshake, session_cookie
from vms.models import ConsoleSession, DesktopStatus, Template
from vms.services.consoles import TicketClaim, console_session_open
from vms.services.desktops.requests import desktop_act

pytestmark = pytest.mark.django_db(transaction=True)


async def _next_message(ws, kind: str) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["kind"] == kind:
            return message


def test_live_feed_pushes_state_changes_and_the_owners_notice(
    channels_relay, employee, helpdesk_user, fake_template, fake_host
) -> None:
    desktop = make_desktop(employee, fake_template, name="live", status=DesktopStatus.RUNNING)

    cookie = session_cookie(employee)

    async def scenario() -> tuple[dict, dict]:
        async with websockets.connect(
            f"{channels_relay.url}/ws/desktops/",
            origin=ORIGIN,
            additional_headers={"Cookie": cookie},
        ) as ws:
            await asyncio.sleep(0.3)
            claim = TicketClaim(
                user_id=helpdesk_user.pk,
                desktop_id=str(desktop.pk),
                mode="view",
                reason="",
                source_ip=None,
            )
            await asyncio.to_thread(
                console_session_open, claim=claim, relay="channels", source_ip=None
            )
            watchers = await _next_message(ws, "watchers")
            await asyncio.to_thread(desktop_act, actor=employee, desktop=desktop, action="stop")
            changed = await _next_message(ws, "desktop")
            return changed, watchers

    changed, watchers = asyncio.run(scenario())
    assert (changed["desktop"]["id"], changed["desktop"]["status"]) == (str(desktop.pk), "stopping")
    [entry] = watchers["watchers"]
    assert (entry["user"], entry["mode"], entry["reason"]) == (helpdesk_user.username, "view", "")


def test_live_feed_refuses_anonymous_and_foreign_origins(channels_relay, employee) -> None:
    async def closed_code(headers: dict, origin: str) -> int | None:
        try:
            async with websockets.connect(
                f"{channels_relay.url}/ws/desktops/", origin=origin, additional_headers=headers
            ) as ws:
                await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        return None

    assert asyncio.run(closed_code({}, ORIGIN)) in (403, 4403)  # refused before accepting
    cookie = {"Cookie": session_cookie(employee)}
    assert asyncio.run(closed_code(cookie, "https://evil.example")) in (403, 4403)


def test_console_cap_per_user(api_for, employee, fake_template, fake_host, settings) -> None:
    settings.CONSOLE_MAX_SESSIONS_PER_USER = 2
    desktop = make_desktop(employee, fake_template, name="capped", status=DesktopStatus.RUNNING)
    for _ in range(2):
        ConsoleSession.objects.create(desktop=desktop, user=employee, mode="full")
    response = api_for(employee).post(f"/api/desktops/{desktop.pk}/console/", {}, format="json")
    assert response.status_code == 429
    assert "2 consoles open" in response.json()["detail"]


def test_helpdesk_needs_a_reason_to_take_control(
    api_for, helpdesk_user, employee, fake_template, fake_host
) -> None:
    desktop = make_desktop(employee, fake_template, name="help", status=DesktopStatus.RUNNING)
    client = api_for(helpdesk_user)
    url = f"/api/desktops/{desktop.pk}/console/"
    assert client.post(url, {}, format="json").json()["mode"] == "view"
    assert client.post(url, {"mode": "full"}, format="json").status_code == 403
    assert client.post(url, {"mode": "full", "reason": "  "}, format="json").status_code == 403
    granted = client.post(url, {"mode": "full", "reason": "ticket 42"}, format="json")
    assert granted.status_code == 200 and granted.json()["mode"] == "full"
    assert client.post(url, {"mode": "root"}, format="json").status_code == 400


def test_console_of_a_stopped_desktop_is_409(api_for, employee, fake_template, fake_host) -> None:
    desktop = make_desktop(employee, fake_template, name="off", status=DesktopStatus.STOPPED)
    response = api_for(employee).post(f"/api/desktops/{desktop.pk}/console/", {}, format="json")
    assert response.status_code == 409
    assert "start it" in response.json()["detail"]


@pytest.mark.libvirt
def test_console_closes_when_the_desktop_stops(
    relay, celery_worker, api_for, employee, demo_template
) -> None:
    launched = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(launched.json()["id"], "running")
    ticket = mint_ticket(employee, desktop)["ticket"]

    cookie = session_cookie(employee)

    async def scenario() -> int | None:
        async with websockets.connect(
            f"{relay.url}/ws/console/{desktop.pk}/",
            origin=ORIGIN,
            subprotocols=["binary", f"ticket.{ticket}"],
            additional_headers={"Cookie": cookie},
        ) as ws:
            await rfb_handshake(ws)  # the session is up
            await asyncio.to_thread(desktop_act, actor=employee, desktop=desktop, action="stop")
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    assert asyncio.run(scenario()) == 4410


@pytest.mark.libvirt
def test_spice_desktop_gets_a_one_minute_virt_viewer_file(
    celery_worker, api_for, employee, demo_template, hypervisor, settings
) -> None:
    settings.SPICE_TLS_DIR = ""  # plain SPICE (tests/fleet/test_spice_tls.py: with TLS)
    Template.objects.filter(pk=demo_template.pk).update(console_type="spice")
    launched = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop = wait_for_status(launched.json()["id"], "running")
    ticket = mint_ticket(employee, desktop)["ticket"]
    browser = Client()
    browser.force_login(employee)
    response = browser.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": ticket})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-virt-viewer"
    assert response["Cache-Control"].startswith("max-age=0")
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(response.content.decode())
    file = config["virt-viewer"]
    # The file names the proxy (its host, port 5900), never the display's own address.
    assert (file["type"], file["host"], file["port"]) == ("spice", "127.0.0.1", "5900")
    assert hypervisor.console_endpoint(name=desktop.domain_name).host == "127.0.0.1"  # local
    assert len(file["password"]) >= 20 and file["delete-this-file"] == "1"
    assert ConsoleSession.objects.get(desktop=desktop).relay == "spice-file"
    again = browser.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": ticket})
    assert again.status_code == 302  # a ticket works once
