"""Real server processes for the tests: daphne (the portal with its Channels relay) on the
test database, reachable over loopback like a browser would reach it."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from portal.stackdumps import DUMP_END

ROOT = Path(__file__).resolve().parent.parent


def var_path(name: str) -> Path:
    """var/<name>, with the xdist worker's name in it under `-n N` (each worker runs its
    own servers, and some tests read their logs)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    path = Path(name)
    return ROOT / "var" / (f"{path.stem}-{worker}{path.suffix}" if worker else name)


def dies_with_parent() -> None:
    """For Popen(preexec_fn=...): the server gets SIGTERM when the test process that
    started it dies, even without its fixture's tear-down (an interrupted xdist worker),
    rather than serve on against the test database and Redis of a later run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = f"{db['USER']}:{db['PASSWORD'] or ''}"
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a server process that works on the test database."""
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="portal.test_settings",
        DATABASE_URL=test_database_url(),
        **extra,
    )


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited; see {log}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}; see {log}")


# The servers running now, by port: their process and log (for `server_stacks`).
_running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}


@contextmanager
def running(command: list[str], *, port: int, log_name: str, **env: str) -> Iterator[int]:
    """Run a server process for the duration of the block; yield its port."""
    log = var_path(log_name)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_parent,
        )
        _running[port] = (process, log)
        try:
            wait_for_port(port, process, log)
            yield port
        finally:
            del _running[port]
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def server_stacks(port: int) -> str:
    """Where the portal server on `port` waits now (see `process_stacks`)."""
    if port not in _running:
        return f"(no server of this test run listens on port {port})"
    return process_stacks(*_running[port])


def process_stacks(process: subprocess.Popen[bytes], log: Path, *, wait_s: float = 10) -> str:
    """A portal server's threads' and asyncio tasks' stacks (portal/stackdumps.py), as it
    wrote them to its log; at most `wait_s` for the task dump (an event loop stuck in a
    C call never writes it, and the threads' dump then says where). For failure messages."""
    start = log.stat().st_size
    process.send_signal(signal.SIGUSR1)
    process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        written = log.read_bytes()[start:].decode(errors="replace")
        if DUMP_END in written:
            return written
        time.sleep(0.1)
    return log.read_bytes()[start:].decode(errors="replace")


def daphne_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "portal.asgi:application",
    ]
