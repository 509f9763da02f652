"""Browser tests: real Chromium (Debian's) driven by Playwright against a real daphne."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection
from playwright.sync_api import Browser, Page, sync_playwright

from tests.servers import daphne_command, free_port, running

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
def chromium() -> Iterator[Browser]:
    """Chromium through Playwright, until the block ends: Playwright's loop must be gone
    afterwards, so only the tests inside the block use it."""
    # Playwright's sync API keeps an event loop running in this thread, which makes Django
    # refuse ORM calls from the test body; the tests are plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            yield launched
            launched.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Chromium for this package's tests only."""
    with chromium() as launched:
        yield launched


def logged_in_page(browser: Browser, portal_url: str, username: str, **context: Any) -> Page:
    """A fresh browser context (its own cookies; a 1280x900 screen unless `context` says
    otherwise, e.g. a phone's) logged in through the real login form."""
    context = browser.new_context(**(context or {"viewport": {"width": 1280, "height": 900}}))
    page = context.new_page()
    page.goto(f"{portal_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    # Where a login lands depends on the role (help-desk staff land on the help desk).
    page.wait_for_url(lambda url: not url.startswith(f"{portal_url}/login/"))
    return page


SHIFTED = {"$": "Digit4", "!": "Digit1", "|": "Backslash", ">": "Period", "_": "Minus"}


def type_like_a_person(page: Page, text: str) -> None:
    """Type as a keyboard would: Shift is a key of its own (QEMU reads scancodes, so a
    bare '$' without Shift would arrive as '4')."""
    for char in text:
        if char in SHIFTED or char.isupper():
            page.keyboard.down("Shift")
            page.keyboard.press(SHIFTED.get(char, f"Key{char.upper()}"))
            page.keyboard.up("Shift")
        elif char == "\n":
            page.keyboard.press("Enter")
        else:
            page.keyboard.press(char)
        time.sleep(0.02)


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
    text = ""
    while time.monotonic() < deadline:
        text = re.sub(r"[ \t]+", "", ocr(read_png())).translate(DASHES)
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"{pattern!r} never appeared on screen; last text:\n{text}")


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
