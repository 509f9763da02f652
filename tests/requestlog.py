"""What a browser context's requests came to, for the message of a page that never got
ready: the requests still waiting for their answer, the ones that failed (one failed
module makes a whole module graph fail, and the page then never runs its script) and the
error answers. Used by the browser tests and the bench."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

from playwright.sync_api import BrowserContext, Page, Request, Response


@dataclass
class RequestLog:
    pending: dict[str, float] = field(default_factory=dict)  # URL -> when it was sent
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sent(self, request: Request) -> None:
        self.pending[request.url] = time.monotonic()

    def finished(self, request: Request) -> None:
        self.pending.pop(request.url, None)

    def failed_with(self, request: Request) -> None:
        self.pending.pop(request.url, None)
        self.failed.append(f"{request.url} ({request.failure})")

    def answered(self, response: Response) -> None:
        if response.status >= 400:
            self.errors.append(f"{response.url} (HTTP {response.status})")

    def summary(self) -> str:
        now = time.monotonic()
        waiting = [f"{url} ({now - sent:.0f} s)" for url, sent in self.pending.items()]
        return f"unfinished requests: {waiting}; failed: {self.failed}; errors: {self.errors}"


_logs: weakref.WeakKeyDictionary[BrowserContext, RequestLog] = weakref.WeakKeyDictionary()


def track_requests(context: BrowserContext) -> RequestLog:
    """Keep what the context's requests come to (see `request_summary`)."""
    log = _logs.setdefault(context, RequestLog())
    context.on("request", log.sent)
    context.on("requestfinished", log.finished)
    context.on("requestfailed", log.failed_with)
    context.on("response", log.answered)
    return log


def tracked_contexts() -> list[BrowserContext]:
    return list(_logs)


def forget(context: BrowserContext) -> None:
    _logs.pop(context, None)


def request_summary(page: Page) -> str:
    log = _logs.get(page.context)
    return log.summary() if log is not None else "(the page's requests were not tracked)"


def requests_of(page: Page) -> RequestLog:
    """The log of `page`'s context (tracked by `track_requests`)."""
    return _logs[page.context]
