"""An ASGI app for tests/test_fresh_context.py, served by a real daphne: each request says
whether it started inside an earlier request's thread-sensitive context, then enters one of
its own (as Django's ASGIHandler does). `bare` is the probe as daphne calls it; `wrapped`
is the probe behind portal.freshcontext.in_fresh_context, as portal.asgi serves the portal."""

from __future__ import annotations

from typing import Any

from asgiref.sync import SyncToAsync, ThreadSensitiveContext

from portal.freshcontext import in_fresh_context


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    inherited = SyncToAsync.thread_sensitive_context.get(None) is not None
    async with ThreadSensitiveContext():
        await receive()
        body = b"inherited" if inherited else b"fresh"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


wrapped = in_fresh_context(bare)
