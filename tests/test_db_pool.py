"""The ASGI server pools its PostgreSQL connections: under ASGI each request runs on a
thread of its own, and without a pool every concurrent request held a connection of its own
(the bench ran PostgreSQL out of slots). A real daphne on the test database, loaded with
concurrent dashboard requests, never holds more connections than the pool's size."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import connection
from django.test import Client

from tests.factories import DesktopFactory
from tests.servers import daphne_command, free_port, running

pytestmark = pytest.mark.django_db(transaction=True)

POOL_SIZE = 3
CONCURRENT = 24
APP_NAME = "pool-probe"  # libpq's PGAPPNAME marks the daphne's connections


def _connections_of_probe(stop: threading.Event, peak: list[int]) -> None:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    with psycopg.connect(**params, autocommit=True) as watcher:
        while not stop.is_set():
            (count,) = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP_NAME]
            ).fetchone()  # type: ignore[misc]
            peak[0] = max(peak[0], count)
            stop.wait(0.02)


@pytest.mark.servers  # daphne of its own
def test_the_asgi_server_holds_at_most_its_pool_of_connections(employee, fake_template) -> None:
    DesktopFactory.create_batch(5, owner=employee, template=fake_template)
    client = Client()
    client.force_login(employee)
    cookie = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    port = free_port()
    env = {"DB_POOL_MAX_SIZE": str(POOL_SIZE), "PGAPPNAME": APP_NAME}
    with running(daphne_command(port), port=port, log_name="test-pool-daphne.log", **env):
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=_connections_of_probe, args=(stop, peak))
        watcher.start()
        try:
            with ThreadPoolExecutor(CONCURRENT) as load:
                answers = list(
                    load.map(
                        lambda _: requests.get(
                            f"http://127.0.0.1:{port}/", cookies=cookie, timeout=30
                        ),
                        range(CONCURRENT * 4),
                    )
                )
        finally:
            stop.set()
            watcher.join()
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert all("Desktop" in a.text for a in answers)
    assert 1 <= peak[0] <= POOL_SIZE, peak[0]
