"""Every ASGI connection runs in a context of its own, never in another request's.

daphne (4.2, on Twisted) starts the application for the next request on a kept-alive
HTTP connection from inside the previous request's reply: Twisted resumes reading the
connection in that call chain, so asyncio's reader callback for the connection, and the
task daphne then creates for the next request, copy the previous request's context
(django/channels#1722, asgiref#279; seen here with two pipelined requests). The next
request then inherits the earlier one's context variables: asgiref's thread-sensitive
context (Django's ASGIHandler reuses it rather than make its own, and the executor it
makes for it is never shut down), asgiref Locals (time zone, translation) and the
portal's own ContextVars.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

Application = Any  # an ASGI 3 callable: (scope, receive, send) -> awaitable


def in_fresh_context(application: Application) -> Application:
    """`application`, each call in a copy of the context this function was called in
    (the server's start-up), whatever context the server calls it from."""
    start = contextvars.copy_context()

    async def fresh(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Cancelling this task (a client gone) cancels the inner one it waits for.
        await asyncio.create_task(application(scope, receive, send), context=start.copy())

    return fresh
