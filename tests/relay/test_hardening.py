"""Console hardening (issue 10): who may present a ticket, exact Origin checks, the
SPICE file's safeguards, the gateway's limits, and sessions whose relay died.

Everything runs against the real relays (daphne, websockify), Redis, PostgreSQL and,
where a session must stay up, a real guest booted by the real worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from ipaddress import ip_network

import pytest
import redis
import websockets
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.fixtures import make_desktop, wait_for_status
from tests.relay.conftest import ORIGIN, PROXY, connect, mint_ticket, rfb_handshake, session_cookie
from tests.servers import ROOT, daphne_command, free_port, running, server_env, var_path
from vms.models import ConsoleSession, Desktop, DesktopStatus, Template
from vms.selectors import console_watchers
from vms.services.consoles.arming import arm_lock_name
from vms.services.consoles.leases import KEY_PREFIX as LEASE_PREFIX
from vms.services.consoles.leases import lease_seconds
from vms.services.consoles.sessions import console_sessions_reap

pytestmark = pytest.mark.django_db(transaction=True)

NO_GUEST = 4502  # admitted: the relay got as far as the (absent) guest display


@pytest.fixture
def desktop_row(employee, fake_template, fake_host) -> Desktop:
    """A desktop marked running (no guest): enough for every admission decision."""
    return make_desktop(
        employee, fake_template, name="row", status=DesktopStatus.RUNNING, domain_name="dpt-none"
    )


def token_ticket(user, desktop, *, remote_addr: str = "127.0.0.1") -> dict:
    """A ticket as a script gets it: API token, no session, from `remote_addr`."""
    api = APIClient(REMOTE_ADDR=remote_addr)
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    response = api.post(f"/api/desktops/{desktop.pk}/console/", {}, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def launch_running(api: APIClient, template: Template) -> Desktop:
    launched = api.post("/api/desktops/", {"template": template.pk}, format="json")
    return wait_for_status(launched.json()["id"], "running")


# --- finding 2: a ticket is not a bearer token --------------------------------------------


def test_browser_ticket_without_its_session_is_refused(channels_relay, employee, desktop_row):
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    outcome = connect(channels_relay.url, desktop_row, ticket, cookie=None)
    assert outcome.code == 4401  # daphne sends no close reason; the code says it
    assert not ConsoleSession.objects.exists()


def test_token_ticket_works_without_a_session_from_its_address(relay, employee, desktop_row):
    ticket = token_ticket(employee, desktop_row)["ticket"]
    assert connect(relay.url, desktop_row, ticket, cookie=None).code == NO_GUEST


def test_ticket_presented_from_another_address_is_refused(relay, employee, desktop_row):
    # Minted as if from 192.0.2.7 (no traffic goes there: Django's test client only sets
    # REMOTE_ADDR); presented from 127.0.0.1.
    ticket = token_ticket(employee, desktop_row, remote_addr="192.0.2.7")["ticket"]
    outcome = connect(relay.url, desktop_row, ticket, cookie=session_cookie(employee))
    assert outcome.code == 4403


def test_relays_bind_to_the_client_a_trusted_proxy_reports(relay, employee, desktop_row, settings):
    settings.TRUSTED_PROXIES = [ip_network(PROXY)]
    api = APIClient(REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR="192.0.2.9")
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=employee).key}")
    url = f"/api/desktops/{desktop_row.pk}/console/"
    ticket = api.post(url, {}, format="json").json()["ticket"]
    assert connect(relay.url, desktop_row, ticket, forwarded_for="192.0.2.9").code == NO_GUEST
    ticket = api.post(url, {}, format="json").json()["ticket"]
    assert connect(relay.url, desktop_row, ticket, forwarded_for="192.0.2.10").code == 4403
    # A client's own X-Forwarded-For line before the proxy's: the proxy's last word counts.
    ticket = api.post(url, {}, format="json").json()["ticket"]
    forged = connect(relay.url, desktop_row, ticket, forwarded_for=["192.0.2.10", "192.0.2.9"])
    assert forged.code == NO_GUEST
    assert set(ConsoleSession.objects.values_list("source_ip", flat=True)) == {"192.0.2.9"}


def test_gateway_binds_browser_tickets_to_their_address(gateway_relay, employee, desktop_row):
    api = APIClient(REMOTE_ADDR="192.0.2.8")
    api.force_login(employee)
    ticket = api.post(f"/api/desktops/{desktop_row.pk}/console/", {}, format="json").json()
    outcome = connect(gateway_relay.url, desktop_row, ticket["ticket"], cookie=None)
    assert outcome.code == 4403
    same_address = mint_ticket(employee, desktop_row)["ticket"]  # from 127.0.0.1
    assert connect(gateway_relay.url, desktop_row, same_address).code == NO_GUEST


# --- finding 3: the Origin must be exactly one of ours --------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:1", "https://127.0.0.1:8000", "http://127.0.0.1"]
)
def test_origin_with_another_port_or_scheme_is_refused(relay, employee, desktop_row, origin):
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    cookie = session_cookie(employee)
    outcome = connect(relay.url, desktop_row, ticket, origin=origin, cookie=cookie)
    assert outcome.code in (403, 4403)


def test_channels_relay_accepts_its_own_origin(channels_relay, employee, desktop_row):
    own = channels_relay.url.replace("ws://", "http://")
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    cookie = session_cookie(employee)
    outcome = connect(channels_relay.url, desktop_row, ticket, origin=own, cookie=cookie)
    assert outcome.code == NO_GUEST


async def _live_feed_outcome(url: str, origin: str, cookie: str) -> int | None:
    try:
        async with websockets.connect(
            f"{url}/ws/desktops/", origin=origin, additional_headers={"Cookie": cookie}
        ) as ws:
            await asyncio.wait_for(ws.recv(), 1)
    except TimeoutError:
        return None  # accepted, and quiet
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except websockets.InvalidStatus as refused:
        return refused.response.status_code
    return None


def test_live_feed_checks_scheme_and_port_of_the_origin(channels_relay, employee):
    cookie = session_cookie(employee)
    own = channels_relay.url.replace("ws://", "http://")
    assert asyncio.run(_live_feed_outcome(channels_relay.url, own, cookie)) is None
    assert asyncio.run(_live_feed_outcome(channels_relay.url, ORIGIN, cookie)) is None  # trusted
    for foreign in ("http://127.0.0.1:1", own.replace("http://", "https://")):
        assert asyncio.run(_live_feed_outcome(channels_relay.url, foreign, cookie)) in (403, 4403)


# --- finding 4: SPICE files only for SPICE desktops, with the relay's safeguards ----------


def test_no_virt_viewer_file_for_a_vnc_desktop(employee, desktop_row):
    ticket = mint_ticket(employee, desktop_row)["ticket"]
    browser = Client()
    browser.force_login(employee)
    response = browser.post(f"/desktops/{desktop_row.pk}/console.vv", {"ticket": ticket})
    assert response.status_code == 302
    page = browser.get(response["Location"])
    assert "This desktop&#x27;s display is VNC; open it in the browser." in page.content.decode()
    assert not ConsoleSession.objects.exists()


@pytest.mark.libvirt
def test_spice_file_arms_nothing_and_shows_the_owner_notice(
    celery_worker, api_for, employee, helpdesk_user, demo_template
):
    """The file holds a display token, not a password: issuing it sets nothing on the
    display, so it neither waits for the relays' arm lock nor races their passwords (the
    SPICE proxy arms the display per channel, under that lock)."""
    Template.objects.filter(pk=demo_template.pk).update(console_type="spice")
    desktop = launch_running(api_for(employee), demo_template)
    ticket = mint_ticket(helpdesk_user, desktop, mode="full", reason="ticket 77")["ticket"]
    browser = Client()
    browser.force_login(helpdesk_user)

    lock = redis.Redis.from_url(settings.REDIS_URL).lock(arm_lock_name(desktop.pk), timeout=10)
    assert lock.acquire(blocking=False)
    try:
        started = time.monotonic()
        response = browser.post(f"/desktops/{desktop.pk}/console.vv", {"ticket": ticket})
        assert response.status_code == 200
        assert time.monotonic() - started < 5  # the held lock did not matter
    finally:
        lock.release()

    session = ConsoleSession.objects.get(desktop=desktop)
    assert (session.relay, session.user, session.ended_at) == ("spice-file", helpdesk_user, None)
    watchers = console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)]
    assert [(w["user"], w["mode"]) for w in watchers] == [(helpdesk_user.username, "full")]
    assert "until" in watchers[0]

    console_sessions_reap(now=timezone.now() + timedelta(seconds=61))
    session.refresh_from_db()
    assert session.ended_at == session.started_at + timedelta(seconds=60)
    assert session.close_reason == "SPICE file expired"
    assert console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)] == []


# --- finding 5: the gateway's limits ---------------------------------------------------------


def _upgrade_request(path: str, port: int) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
    ).encode()


def test_gateway_drops_an_upgrade_that_dawdles(gateway_relay):
    port = int(gateway_relay.url.rsplit(":", 1)[1])
    request = _upgrade_request("/ws/console/00000000-0000-0000-0000-000000000000/", port)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(1)
        for byte in request[:15]:  # one byte a second: the limit must cut in before the end
            sock.sendall(bytes([byte]))
            try:
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
        else:
            raise AssertionError("the gateway waited for the whole slow request")
    assert time.monotonic() - started < 10  # CONSOLE_HANDSHAKE_TIMEOUT_S is 3 here


@pytest.mark.servers  # a gateway of its own
def test_gateway_refuses_connections_over_its_cap(django_db_setup):
    port = free_port()
    with capped_gateway(port, max_connections=2) as listener:
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for sock in stalled:
            sock.sendall(b"GET /ws/console/")  # a request that never finishes
        _wait_for_children(listener, 2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            third.sendall(_upgrade_request("/ws/console/x/", port))
            assert third.recv(100).startswith(b"HTTP/1.1 503")
        for sock in stalled:
            sock.close()
        _wait_for_children(listener, 0)


@contextmanager
def capped_gateway(port: int, *, max_connections: int) -> Iterator[int]:
    """A gateway with a connection cap, known ready from its log rather than by
    connecting (a probe connection would itself count against the cap)."""
    log = var_path("test-gateway-capped.log")
    env = server_env(
        ALLOWED_HOSTS="127.0.0.1",
        CSRF_TRUSTED_ORIGINS=ORIGIN,
        CONSOLE_GATEWAY_MAX_CONNECTIONS=str(max_connections),
        CONSOLE_HANDSHAKE_TIMEOUT_S="20",
        LOG_LEVEL="INFO",
    )
    command = [sys.executable, "manage.py", "consoleproxy", "--listen", f"127.0.0.1:{port}"]
    with open(log, "wb") as out:
        gateway = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while b"console gateway listening" not in log.read_bytes():
            assert gateway.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield gateway.pid
    finally:
        gateway.terminate()
        gateway.wait(timeout=15)


@pytest.mark.libvirt
def test_oversized_browser_messages_close_the_console_with_1009(
    channels_relay, gateway_relay, celery_worker, api_for, employee, demo_template
):
    desktop = launch_running(api_for(employee), demo_template)
    cookie = session_cookie(employee)

    async def announce_huge_frame(url: str, ticket: str) -> int | None:
        async with websockets.connect(
            f"{url}/ws/console/{desktop.pk}/",
            origin=ORIGIN,
            subprotocols=["binary", f"ticket.{ticket}"],
            additional_headers={"Cookie": cookie},
            max_size=None,
        ) as ws:
            await rfb_handshake(ws)  # the session is up
            # A masked binary frame that announces 1 GiB, then a little of it.
            ws.transport.write(b"\x82\xff" + (1 << 30).to_bytes(8, "big") + b"mask" + b"x" * 8192)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    # Daphne (autobahn) drops the connection without a close frame; the gateway says 1009.
    expected = {"channels": (None, 1009), "gateway": (1009,)}
    for relay in (channels_relay, gateway_relay):
        ticket = mint_ticket(employee, desktop)["ticket"]
        assert asyncio.run(announce_huge_frame(relay.url, ticket)) in expected[relay.name]


# --- finding 6: sessions whose relay died are closed -------------------------------------


@pytest.mark.libvirt
def test_sessions_of_a_killed_relay_are_closed_by_reconcile(
    django_db_setup, celery_worker, api_for, employee, helpdesk_user, demo_template
):
    desktop = launch_running(api_for(employee), demo_template)
    port = free_port()
    with running(
        daphne_command(port),
        port=port,
        log_name="test-relay-killed.log",
        ALLOWED_HOSTS="127.0.0.1",
        CSRF_TRUSTED_ORIGINS=ORIGIN,
    ):
        ticket = mint_ticket(helpdesk_user, desktop)["ticket"]
        cookie = session_cookie(helpdesk_user)
        assert _open_and_kill(f"ws://127.0.0.1:{port}", desktop, ticket, cookie)
    session = ConsoleSession.objects.get(desktop=desktop)
    assert session.ended_at is None  # the killed relay could not record the end
    assert console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)] != []

    later = timezone.now() + timedelta(seconds=120)
    assert console_sessions_reap(now=later) == 0  # its lease has not lapsed yet
    redis.Redis.from_url(settings.REDIS_URL).pexpire(f"{LEASE_PREFIX}{session.pk}", 1)
    time.sleep(0.05)
    # Seen missing once is not enough: a Redis restart loses every lease for a moment.
    assert console_sessions_reap(now=later) == 0
    assert ConsoleSession.objects.get(pk=session.pk).ended_at is None
    much_later = later + timedelta(seconds=lease_seconds())
    assert console_sessions_reap(now=much_later) == 1
    session.refresh_from_db()
    assert session.ended_at is not None
    assert session.close_reason == "the relay carrying it went away"
    assert console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)] == []


def _open_and_kill(url: str, desktop: Desktop, ticket: str, cookie: str) -> bool:
    """Open a console through the daphne at `url`, then SIGKILL that daphne."""

    async def scenario() -> bool:
        async with websockets.connect(
            f"{url}/ws/console/{desktop.pk}/",
            origin=ORIGIN,
            subprotocols=["binary", f"ticket.{ticket}"],
            additional_headers={"Cookie": cookie},
        ) as ws:
            await rfb_handshake(ws)  # the session is up
            _kill_listener(url)
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except (websockets.ConnectionClosed, TimeoutError):
                return True
        return True

    return asyncio.run(scenario())


def _kill_listener(url: str) -> None:
    os.kill(_pid_serving(int(url.rsplit(":", 1)[1]), b"daphne"), signal.SIGKILL)


def _pid_serving(port: int, program: bytes) -> int:
    """The server we started whose command line names `program` and `port`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                cmdline = file.read()
        except OSError:
            continue
        if program in cmdline and str(port).encode() in cmdline:
            return int(pid)
    raise AssertionError(f"no {program!r} serving port {port}")


def _wait_for_children(pid: int, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(_children(pid)) != count:
        assert time.monotonic() < deadline, f"process {pid} has {_children(pid)} children"
        time.sleep(0.05)


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return file.read().split()
