"""portal/freshcontext.py: a kept-alive connection's next request does not start in the
previous request's context (real daphne, two requests pipelined on one connection)."""

from __future__ import annotations

import socket
import sys

import pytest

from tests.servers import free_port, running

PROBE = "tests.context_probe_asgi"
REQUEST = b"GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _answers(port: int, count: int) -> list[bytes]:
    """Send `count` requests at once on one connection; the bodies of the answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(REQUEST * count)
        data = b""
        while data.count(b"HTTP/1.1 200") < count or not data.endswith((b"fresh", b"inherited")):
            chunk = connection.recv(65536)
            assert chunk, f"the server closed the connection after {data!r}"
            data += chunk
    return [answer.split(b"\r\n\r\n", 1)[1] for answer in data.split(b"HTTP/1.1 ")[1:]]


def _daphne(port: int, app: str) -> list[str]:
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]


@pytest.mark.servers
@pytest.mark.django_db(transaction=True)  # tests/servers.py reads the test database's URL
def test_daphne_starts_a_kept_alive_connections_next_request_in_the_previous_ones() -> None:
    """The fault the wrapper is for; if daphne stops doing this, the wrapper can go."""
    port = free_port()
    with running(_daphne(port, f"{PROBE}:bare"), port=port, log_name="probe.log"):
        assert _answers(port, 3) == [b"fresh", b"inherited", b"inherited"]


@pytest.mark.servers
@pytest.mark.django_db(transaction=True)
def test_the_portal_starts_every_request_in_a_context_of_its_own() -> None:
    port = free_port()
    with running(_daphne(port, f"{PROBE}:wrapped"), port=port, log_name="probe.log"):
        assert _answers(port, 3) == [b"fresh", b"fresh", b"fresh"]
