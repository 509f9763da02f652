"""Chromium's requests survive the machine's addresses coming and going: it runs in a
network namespace of its own (tests/browsernet.py). In the machine's namespace it failed
the requests in flight with net::ERR_NETWORK_CHANGED whenever a lab host, a desktop
network or a guest added or removed an address, and a console page whose module failed
never ran.

The churn is made here: a veth pair of this test's own in the machine's namespace, made,
given a documentation address, taken up and removed again (nothing is sent anywhere)."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import logged_in_page
from tests.fixtures import make_desktop
from tests.requestlog import requests_of
from vms.models import DesktopStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
CHURN_ADDRESS = "198.51.100.7/32"  # TEST-NET-2: on a link of our own, never routed


@contextmanager
def churning_addresses() -> Iterator[Callable[[], int]]:
    """A veth pair that comes and goes (an IPv4 address, and the IPv6 link-local ones new
    links get) until the block ends; yields how many times it has come so far."""
    link = f"dpchurn{os.getpid() % 100000}"
    stop, rounds, failures = threading.Event(), [0], []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def churn() -> None:
        try:
            while not stop.is_set():
                ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
                ip("addr", "add", CHURN_ADDRESS, "dev", link)
                ip("link", "set", f"{link}p", "up")
                ip("link", "set", link, "up")
                stop.wait(0.05)
                ip("link", "del", link)  # its peer with it
                rounds[0] += 1
        except subprocess.CalledProcessError as exc:  # raised in the test, below
            failures.append(f"{exc.cmd}: {exc.stderr!r}")

    thread = threading.Thread(target=churn, name="address-churn")
    thread.start()
    try:
        yield lambda: rounds[0]
    finally:
        stop.set()
        thread.join(30)
        subprocess.run(["ip", "link", "del", link], capture_output=True)  # if churn() failed
    assert not thread.is_alive() and not failures, failures


def test_pages_load_whole_while_the_machines_addresses_come_and_go(
    browser: Browser, portal_url: str, employee: Any, fake_template: Any
) -> None:
    desktop = make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    page = logged_in_page(browser, portal_url, employee.username)
    with churning_addresses() as churned:
        for _ in range(6):  # the console page: about 90 modules, each a request in flight
            page.goto(f"{portal_url}/desktops/{desktop.pk}/console/")
            expect(page.locator("#console-status")).to_have_text("This desktop is stopped.")
            expect(page.locator("body")).not_to_have_attribute("data-scripts", "failed")
        assert churned() >= 10, "the machine's addresses hardly changed while pages loaded"
    log = requests_of(page)
    # Only what a page's own going away aborts (the dashboard's first fetch after login).
    lost = [failure for failure in log.failed if "net::ERR_ABORTED" not in failure]
    assert not lost and not log.errors, log.summary()
    page.context.close()
