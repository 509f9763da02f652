"""Chromium in a network namespace of its own, reaching the portal through a forwarder.

Chromium fails every request in flight (net::ERR_NETWORK_CHANGED) when an address of its
network namespace comes or goes. On this machine the suite's lab hosts, desktop networks
and guests add and remove such addresses all the time (a bridge's, each new veth's and
tap's IPv6 link-local one): a console page's modules failed to load, and the page never
ran (seen in full runs and in the bench's boot storm). In a namespace of its own Chromium
sees only its own loopback, which nothing changes. A forwarder listens there on the
portal's port and carries each connection to the portal on the machine's loopback, so
pages keep their address (http://127.0.0.1:PORT) and nothing else is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NAME_PREFIX = "dpbrowser-"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _sweep() -> None:
    """Remove the namespaces of browsers whose process is gone (killed, not torn down)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name.removeprefix(NAME_PREFIX).split("-")[0]
        if name.startswith(NAME_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _listener_in(namespace: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:`port` of `namespace`: made by a thread that
    entered it (a thread's network namespace is its own; the socket keeps the one it was
    made in)."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with open(f"/run/netns/{namespace}") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(256)
            sock.setblocking(False)
            made.append(sock)
        except BaseException as exc:  # handed to the caller, raised there
            made.append(exc)

    thread = threading.Thread(target=make, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction of a connection; the end of either side ends it (a reset too)."""
    try:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
    finally:
        writer.close()


class Forwarder:
    """An event loop in a thread of its own, carrying connections from listeners in the
    browser's namespace to the same port on the machine's loopback."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.Server] = []
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-forwarder")
        self.thread.start()

    def add(self, listener: socket.socket, port: int) -> None:
        async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(carry, sock=listener)

        self.servers.append(asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10))

    def stop(self) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the browser's forwarder did not stop"
        self.loop.close()


_count = 0


@contextmanager
def browser_network(*, chromium: str, ports: list[int]) -> Iterator[str]:
    """A network namespace for one browser, from which 127.0.0.1:`ports` reach the
    machine's; yields an executable that runs `chromium` in it. Everything goes at the
    end."""
    global _count
    _count += 1
    _sweep()
    namespace = f"{NAME_PREFIX}{os.getpid()}-{_count}"
    _ip("netns", "add", namespace)
    forwarder: Forwarder | None = None
    launcher = Path(f"/run/{namespace}-chromium")
    try:
        _ip("-n", namespace, "link", "set", "lo", "up")
        forwarder = Forwarder()
        for port in ports:
            forwarder.add(_listener_in(namespace, port), port)
        launcher.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} "{chromium}" "$@"\n')
        launcher.chmod(0o755)
        yield str(launcher)
    finally:
        launcher.unlink(missing_ok=True)
        if forwarder is not None:
            forwarder.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", namespace)
