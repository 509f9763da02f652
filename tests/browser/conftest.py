"""Browser tests: real Chromium (Debian's) driven by Playwright against a real daphne."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.db import connection
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browsernet import browser_network
from tests.guestshell import GUEST_BOOT_S
from tests.requestlog import forget, request_summary, track_requests, tracked_contexts
from tests.servers import daphne_command, free_port, running, server_stacks

# Chromium as the suite runs it: tests/browser/chromium says why not /usr/bin/chromium.
CHROMIUM = str(Path(__file__).with_name("chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def portal_url(django_db_setup: None, celery_worker: Any) -> Iterator[str]:
    """The portal served by daphne on a free loopback port, on the test database."""
    port = free_port()
    with running(
        daphne_command(port),
        port=port,
        log_name="test-daphne.log",
        ALLOWED_HOSTS="127.0.0.1,localhost",
    ):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def chromium(*, portal: str) -> Iterator[Browser]:
    """Chromium through Playwright, until the block ends: Playwright's loop must be gone
    afterwards, so only the tests inside the block use it. It runs in a network namespace
    of its own (tests/browsernet.py says why), from which it reaches `portal` only."""
    # Playwright's sync API keeps an event loop running in this thread, which makes Django
    # refuse ORM calls from the test body; the tests are plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    port = urlsplit(portal).port
    assert port is not None, portal
    try:
        with (
            browser_network(chromium=CHROMIUM, ports=[port]) as executable,
            sync_playwright() as playwright,
        ):
            launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                yield launched
            finally:
                # Its contexts go with it (a tracked one closed after Playwright stopped
                # would raise: the fleet's modules have no tear-down hook closing them).
                for context in tracked_contexts():
                    if context.browser is launched:
                        forget(context)
                launched.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture(scope="package")
def browser(portal_url: str) -> Iterator[Browser]:
    """Chromium for this package's tests only."""
    with chromium(portal=portal_url) as launched:
        yield launched


SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def shot(page: Page, name: str) -> None:
    """A full-page screenshot into docs/screenshots/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def logged_in_page(browser: Browser, portal_url: str, username: str, **context: Any) -> Page:
    """A fresh browser context (its own cookies; a 1280x900 screen unless `context` says
    otherwise, e.g. a phone's) logged in through the real login form."""
    context = browser.new_context(**(context or {"viewport": {"width": 1280, "height": 900}}))
    track_requests(context)
    page = context.new_page()
    page.goto(f"{portal_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    # Where a login lands depends on the role (help-desk staff land on the help desk).
    page.wait_for_url(lambda url: not url.startswith(f"{portal_url}/login/"))
    return page


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test's logged-in contexts close before the suite waits for its servers to be
    quiet (tests/fixtures.py): a test that failed with a console open held it open, and
    that wait failed as well, 120 s later."""
    for context in tracked_contexts():
        forget(context)
        if context.browser is not None and context.browser.is_connected():
            context.close()
    return (yield)


def wait_for_console(page: Page, *, timeout_s: float = 45) -> None:
    """Wait until the console page says it is connected; if it does not, fail with what its
    status line says instead (a refused ticket, a lost connection...) and the requests it
    still waits for (a page whose scripts never all arrived never asks for a ticket)."""
    try:
        page.wait_for_selector(
            "body[data-console=connected], body[data-scripts=failed]", timeout=timeout_s * 1000
        )
        if page.locator("body[data-scripts=failed]").count():
            raise AssertionError(f"the console page's scripts failed; {request_summary(page)}")
    except PlaywrightTimeout:
        status = page.locator("#console-status").inner_text(timeout=5000)
        requests = request_summary(page)
        stacks = server_stacks(urlsplit(page.url).port or 80)
        raise AssertionError(
            f"no console after {timeout_s} s; the page says {status!r}; {requests}; "
            f"the portal server's stacks:\n{stacks}"
        ) from None


SHIFTED = {"$": "Digit4", "!": "Digit1", "|": "Backslash", ">": "Period", "_": "Minus"}


def type_like_a_person(page: Page, text: str) -> None:
    """Type as a keyboard would: Shift is a key of its own (QEMU reads scancodes, so a
    bare '$' without Shift would arrive as '4'), paced so that QEMU's 16-scancode keyboard
    queue does not overflow while a busy machine keeps the guest's vCPU waiting."""
    for char in text:
        if char in SHIFTED or char.isupper():
            page.keyboard.down("Shift")
            page.keyboard.press(SHIFTED.get(char, f"Key{char.upper()}"))
            page.keyboard.up("Shift")
        elif char == "\n":
            page.keyboard.press("Enter")
        else:
            page.keyboard.press(char)
        time.sleep(0.05)


def ocr(png: bytes) -> str:
    """Text in a screenshot (tesseract; the image is scaled up for the VGA font)."""
    from io import BytesIO

    from PIL import Image, ImageOps

    # Light-on-dark VGA text reads best as black on white, binarised, at twice the size.
    image = Image.open(BytesIO(png)).convert("L")
    image = image.resize((image.width * 2, image.height * 2), Image.LANCZOS)
    image = ImageOps.invert(image.point(lambda level: 255 if level > 90 else 0))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    done = subprocess.run(
        ["tesseract", "-", "-", "--psm", "6"],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
        timeout=60,
        # Tesseract's OpenMP threads spin: on 2 cores one screen took 6.3 CPU-seconds
        # (6.6 s) with them and 0.8 with one thread, the same text read. The suite polls
        # screens while guests boot beside it.
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )
    return done.stdout.decode(errors="replace")


DASHES = str.maketrans({"\u2014": "-", "\u2013": "-"})  # em and en dash, as OCR reads "-"


def wait_for_text(read_png: Any, pattern: str, *, timeout: float = 30) -> str:
    """Poll screenshots until their text matches `pattern`; return the text.

    Spaces are removed before matching (OCR splits words of the VGA font at random:
    "hel lo"), so write patterns without spaces, and allow for look-alikes (l/1, $/S);
    long dashes are read as hyphens.
    """
    deadline = time.monotonic() + timeout
    text, read = "", b""
    while time.monotonic() < deadline:
        png = read_png()
        if png != read:  # an unchanged screen says what it said
            read, text = png, re.sub(r"[ \t]+", "", ocr(png)).translate(DASHES)
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"{pattern!r} never appeared on screen; last text:\n{text}")


# What the demo guest's screen shows once it has booted (OCR drops the spaces).
GUEST_BANNER = r"DesktopPortaldemoguest"


def wait_for_boot(read_png: Any) -> str:
    """Wait until the screen shows the booted guest's banner (`GUEST_BOOT_S` at most)."""
    return wait_for_text(read_png, GUEST_BANNER, timeout=GUEST_BOOT_S)


def off_thread(work: Callable[..., Any], **kwargs: Any) -> Any:
    """Run a service call outside Playwright's thread: its running event loop makes the
    services' live push (async_to_sync) refuse to run here."""

    def run() -> Any:
        try:
            return work(**kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()
