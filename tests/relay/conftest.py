"""Both console relays, run as real servers: the Channels relay inside daphne and the
websockify gateway (`manage.py consoleproxy`). The protocol tests run against each."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from django.test import Client

from tests.servers import daphne_command, free_port, running

ORIGIN = "http://127.0.0.1:8000"
# The relays run as if behind the TLS proxy on loopback: they believe its X-Forwarded-For.
PROXY = "127.0.0.1"


@dataclass(frozen=True)
class Relay:
    """A running relay: its name (as recorded in console sessions) and base URL."""

    name: str
    url: str


@pytest.fixture(scope="session")
def channels_relay(django_db_setup: None) -> Iterator[Relay]:
    port = free_port()
    with running(
        daphne_command(port),
        port=port,
        log_name="test-relay-daphne.log",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        TRUSTED_PROXIES=PROXY,
        CSRF_TRUSTED_ORIGINS=ORIGIN,
        CONSOLE_RECHECK_S="1",
    ):
        yield Relay("channels", f"ws://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def gateway_relay(django_db_setup: None) -> Iterator[Relay]:
    port = free_port()
    command = [sys.executable, "manage.py", "consoleproxy", "--listen", f"127.0.0.1:{port}"]
    with running(
        command,
        port=port,
        log_name="test-gateway.log",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        TRUSTED_PROXIES=PROXY,
        CSRF_TRUSTED_ORIGINS=ORIGIN,
        CONSOLE_HANDSHAKE_TIMEOUT_S="3",
        CONSOLE_RECHECK_S="1",
    ):
        yield Relay("gateway", f"ws://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def spice_proxy(django_db_setup: None) -> Iterator[int]:
    """`manage.py spiceproxy` on a free loopback port (yields the port); re-checks every
    second, gives a request head 3 s and holds at most 12 connections."""
    port = free_port()
    command = [sys.executable, "manage.py", "spiceproxy", "--listen", f"127.0.0.1:{port}"]
    with running(
        command,
        port=port,
        log_name="test-spiceproxy.log",
        LOG_LEVEL="INFO",
        CONSOLE_RECHECK_S="1",
        CONSOLE_HANDSHAKE_TIMEOUT_S="3",
        SPICE_PROXY_MAX_CONNECTIONS="12",
        SPICE_TLS_DIR="",  # plain SPICE here; tests/fleet/test_spice_tls.py has the TLS proxy
    ):
        yield port


@pytest.fixture(params=["channels", "gateway"])
def relay(request: pytest.FixtureRequest) -> Relay:
    """One relay (each test that asks for it runs against both)."""
    relay: Relay = request.getfixturevalue(f"{request.param}_relay")
    return relay


@dataclass
class Outcome:
    """How a console connection ended: a close code and reason, or a ServerInit."""

    code: int | None
    reason: str
    server_init: bytes = b""


def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def mint_ticket(user: Any, desktop: Any, **body: str) -> dict[str, Any]:
    """A console ticket from the real API, as the console page gets it."""
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_login(user)
    response = api.post(f"/api/desktops/{desktop.pk}/console/", body, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


async def _handshake(
    url: str,
    ticket: str,
    origin: str,
    cookie: str | None,
    after: bytes,
    forwarded_for: str | list[str] | None = None,
) -> Outcome:
    headers = [("Cookie", cookie)] if cookie else []
    lines = [forwarded_for] if isinstance(forwarded_for, str) else forwarded_for or []
    headers += [("X-Forwarded-For", line) for line in lines]  # one header line each
    async with websockets.connect(
        url,
        subprotocols=["binary", f"ticket.{ticket}"],
        origin=origin,
        additional_headers=headers or None,
        open_timeout=10,
    ) as ws:
        try:
            assert await asyncio.wait_for(ws.recv(), 20) == b"RFB 003.008\n"
            await ws.send(b"RFB 003.008\n")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x01\x01"  # only "None"
            await ws.send(b"\x01")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x00\x00\x00"
            await ws.send(b"\x01")
            server_init = await asyncio.wait_for(ws.recv(), 10)
            if after:
                await ws.send(after)
                return await _drain(ws, bytes(server_init))
            return Outcome(None, "", bytes(server_init))
        except websockets.ConnectionClosed as closed:
            return Outcome(
                closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else ""
            )


async def rfb_handshake(ws: Any) -> bytes:
    """The browser's side of the RFB handshake through a relay; returns ServerInit."""
    await ws.recv()
    await ws.send(b"RFB 003.008\n")
    await ws.recv()
    await ws.send(b"\x01")
    await ws.recv()
    await ws.send(b"\x01")
    return bytes(await ws.recv())


async def _drain(ws: Any, server_init: bytes) -> Outcome:
    """Read for a second after the last message; report a close if one comes."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 1)
    except TimeoutError:
        return Outcome(None, "", server_init)
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd else None
        return Outcome(code, closed.rcvd.reason if closed.rcvd else "", server_init)


CONNECTED = "connected"  # a random ticket's console opened: what must never happen


async def random_tickets(relay: str, desktop: Any, cookie: str, count: int) -> Counter[Any]:
    """Try `count` random tickets, 20 at a time; count how each attempt ended: a close
    code, an HTTP status, None for a connection dropped before any RFB byte (a loaded
    server's handshake timeout), or CONNECTED."""
    import secrets

    async def one() -> Any:
        url = f"{relay}/ws/console/{desktop.pk}/"
        try:
            outcome = await _handshake(url, secrets.token_urlsafe(32), ORIGIN, cookie, b"")
        except websockets.InvalidStatus as refused:
            return refused.response.status_code
        return CONNECTED if outcome.server_init else outcome.code

    seen: Counter[Any] = Counter()
    for start in range(0, count, 20):
        batch = min(20, count - start)
        seen.update(await asyncio.gather(*(one() for _ in range(batch))))
    return seen


def connect(
    relay: str,
    desktop: Any,
    ticket: str,
    *,
    origin: str = ORIGIN,
    cookie: str | None = None,
    after: bytes = b"",
    forwarded_for: str | list[str] | None = None,
) -> Outcome:
    """Open a console through `relay` and do the browser's side of the RFB handshake."""
    url = f"{relay}/ws/console/{desktop.pk}/"
    try:
        return asyncio.run(_handshake(url, ticket, origin, cookie, after, forwarded_for))
    except websockets.InvalidStatus as refused:
        return Outcome(refused.response.status_code, "refused at the upgrade")
