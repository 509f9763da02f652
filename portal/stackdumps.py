"""Stack dumps on demand, for a server that stopped answering without an error.

`kill -USR1 <pid>` writes every thread's Python stack to stderr (faulthandler: it works
even while the event loop's thread is stuck in a C call); `kill -USR2 <pid>` writes every
asyncio task's stack (it runs on the event loop's thread, between two of its steps).
Neither stops the server. The ASGI server installs both (portal/asgi.py).
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from types import FrameType

# The last line of a task dump: whoever asked for one knows it is whole.
DUMP_END = "stack dump: end"


def install_stack_dumps() -> None:
    """SIGUSR1: the threads' stacks; SIGUSR2: the asyncio tasks' stacks."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGUSR2, _dump_tasks)


def _dump_tasks(signum: int, frame: FrameType | None) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        print("stack dump: no event loop runs in this thread", file=sys.stderr)
        print(DUMP_END, file=sys.stderr, flush=True)
        return
    tasks = asyncio.all_tasks(loop)
    print(f"stack dump: {len(tasks)} asyncio tasks", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=12, file=sys.stderr)
    print(DUMP_END, file=sys.stderr, flush=True)
