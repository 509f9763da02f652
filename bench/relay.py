"""3. Console relay: the Channels relay (daphne) and the websockify gateway, each against raw
TCP to the same VNC-like echo server (bench/echo_server.py), in the same run.

The relays run unmodified in their own processes (bench/echo_asgi.py, bench/echo_gateway.py)
and do everything they do for a guest: admission with a one-time ticket, arming the display
through the hypervisor layer, VNC Authentication upstream, the browser-side handshake, and
the RFB client-message filter in full-control mode. The client speaks RFB like noVNC would
(well-formed FramebufferUpdateRequest and ClientCutText messages only).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import websockets
from asgiref.sync import sync_to_async

from bench.common import (
    PYTHON,
    WORK,
    children_of,
    cpu_s,
    daphne_command,
    free_port,
    log,
    median,
    percentile,
    process_tree,
    rss_kib,
    smaps_kib,
    start_server,
    stop_server,
)
from bench.echo_seam import ECHO_DOMAIN, PASSWORD_ENV, write_echo_node
from bench.fixtures import make_user, running_desktop
from vms.console.rfb import UpstreamHandshake
from vms.models import ConsoleSession, Desktop, Host, Template
from vms.services.consoles import TicketBinding, console_ticket_issue

FBUR = b"\x03\x01" + struct.pack(">HHHH", 0, 0, 1024, 768)  # incremental update request
REPLY_TO_FBUR = 10
# The raw-TCP baseline authenticates itself (no relay arms the echo server for it).
RAW_PASSWORD = "rawbench"  # noqa: S105


# --- the three paths to the echo server, behind one interface ------------------------------------


class RawStream:
    """RFB straight over TCP to the echo server: the baseline."""

    name = "raw TCP"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as the relays set it
        handshake = UpstreamHandshake(RAW_PASSWORD)
        while not handshake.done:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("the echo server closed during the handshake")
            reply = handshake.receive(data)
            if reply:
                writer.write(reply)
        assert not handshake.leftover
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv_some(self) -> bytes:
        data = await self.reader.read(256 * 1024)
        if not data:
            raise ConnectionError("closed")
        return data

    async def close(self) -> None:
        self.writer.close()


class WsStream:
    """RFB over a WebSocket through a relay, as noVNC speaks it."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws, self.name = ws, name
        self.pending = b""

    @classmethod
    async def open(cls, url: str, ticket: str, origin: str, name: str) -> WsStream:
        ws = await websockets.connect(
            url,
            subprotocols=["binary", f"ticket.{ticket}"],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            open_timeout=30,
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        stream = cls(ws, name)
        try:
            await stream._handshake()
        except BaseException:
            await ws.close()
            raise
        return stream

    async def _exact(self, count: int) -> bytes:
        while len(self.pending) < count:
            self.pending += await asyncio.wait_for(self.ws.recv(), 30)
        data, self.pending = self.pending[:count], self.pending[count:]
        return data

    async def _handshake(self) -> None:
        if await self._exact(12) != b"RFB 003.008\n":
            raise ConnectionError("no RFB banner")
        await self.ws.send(b"RFB 003.008\n")
        if await self._exact(2) != b"\x01\x01":
            raise ConnectionError("the relay did not offer security type None")
        await self.ws.send(b"\x01")
        if await self._exact(4) != b"\x00\x00\x00\x00":
            raise ConnectionError("security result not OK")
        await self.ws.send(b"\x01")  # ClientInit, shared
        header = await self._exact(24)
        (name_length,) = struct.unpack_from(">I", header, 20)
        await self._exact(name_length)

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv_some(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return bytes(await self.ws.recv())

    async def close(self) -> None:
        await self.ws.close()


async def recv_exact(stream: Any, count: int) -> None:
    got = 0
    while got < count:
        got += len(await stream.recv_some())
    if got != count:
        raise AssertionError(f"the echo returned {got} bytes for {count}")


# --- measurements ------------------------------------------------------------------------------


async def round_trips(stream: Any, count: int) -> list[float]:
    """Milliseconds per FramebufferUpdateRequest -> 10-byte answer, one at a time."""
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        await stream.send(FBUR)
        await recv_exact(stream, REPLY_TO_FBUR)
        times.append((time.perf_counter_ns() - started) / 1e6)
    return times


async def throughput(stream: Any, total_bytes: int, chunk: int = 64 * 1024) -> float:
    """MB/s of one stream of ClientCutText messages echoed back as ServerCutText."""
    message = b"\x06\x00\x00\x00" + struct.pack(">I", chunk) + bytes(range(256)) * (chunk // 256)
    count = max(1, total_bytes // len(message))
    expected = count * len(message)

    async def writer() -> None:
        for _ in range(count):
            await stream.send(message)

    async def reader() -> None:
        got = 0
        while got < expected:
            got += len(await stream.recv_some())

    started = time.perf_counter()
    await asyncio.gather(writer(), reader())
    elapsed = time.perf_counter() - started
    return expected / elapsed / 1e6


# --- the servers and the echo desktop ----------------------------------------------------------


class RelayRig:
    """Echo server, echo host and desktop, and both relays with the seam installed."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.servers: list[Any] = []

    def __enter__(self) -> RelayRig:
        WORK.mkdir(parents=True, exist_ok=True)
        self.password_file = WORK / "echo-password"
        self.password_file.unlink(missing_ok=True)
        echo_port = free_port()
        self.echo = start_server(
            [PYTHON, "bench/echo_server.py", str(echo_port), str(self.password_file)],
            name="echo-server",
            port=echo_port,
        )
        self.servers.append(self.echo)
        self.echo_port = echo_port
        uri = write_echo_node(WORK / "echo-node.xml", port=echo_port)
        host = Host.objects.create(name="echo", uri=uri, storage_pool="none", enabled=False)
        self.user = make_user("relay-bench")
        self.desktop = running_desktop(self.user, host, self.template, domain=ECHO_DOMAIN)
        env = {PASSWORD_ENV: str(self.password_file)}
        port = free_port()
        self.daphne = start_server(daphne_command(port, "bench.echo_asgi:application"),
                                   name="relay-daphne", port=port, **env)  # fmt: skip
        self.servers.append(self.daphne)
        self.channels_url = f"ws://127.0.0.1:{port}/ws/console/{self.desktop.pk}/"
        self.origin = f"http://127.0.0.1:{port}"
        gport = free_port()
        # The gateway serves the page's origin (daphne's), like a real deployment's.
        self.gateway = start_server([PYTHON, "bench/echo_gateway.py", f"127.0.0.1:{gport}"],
                                    name="relay-gateway", port=gport,
                                    CSRF_TRUSTED_ORIGINS=self.origin, **env)  # fmt: skip
        self.servers.append(self.gateway)
        self.gateway_url = f"ws://127.0.0.1:{gport}/ws/console/{self.desktop.pk}/"
        return self

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self.servers):
            stop_server(server)

    def url(self, relay: str) -> str:
        return self.channels_url if relay == "channels" else self.gateway_url

    async def open(self, relay: str) -> Any:
        if relay == "raw":
            self.password_file.write_text(RAW_PASSWORD)
            return await RawStream.open(self.echo_port)
        ticket = await sync_to_async(self._ticket)()
        name = "Channels relay" if relay == "channels" else "websockify gateway"
        return await WsStream.open(self.url(relay), ticket, self.origin, name)

    def _ticket(self) -> str:
        desktop = Desktop.objects.get(pk=self.desktop.pk)
        # A script's ticket, bound to its address (it has no browser session).
        issued = console_ticket_issue(
            user=self.user,
            desktop=desktop,
            mode="full",
            reason="",
            source_ip="127.0.0.1",
            binding=TicketBinding.ADDRESS,
        )
        return issued.ticket

    def open_sessions(self) -> int:
        return ConsoleSession.objects.filter(desktop=self.desktop, ended_at__isnull=True).count()


RELAYS = ("raw", "channels", "gateway")


async def _latency(rig: RelayRig, rounds: int, per_round: int) -> dict[str, list[float]]:
    streams = {relay: await rig.open(relay) for relay in RELAYS}
    try:
        for stream in streams.values():
            await round_trips(stream, 20)  # warm-up
        samples: dict[str, list[float]] = {relay: [] for relay in RELAYS}
        for _ in range(rounds):  # interleaved, so that drift hits every path alike
            for relay, stream in streams.items():
                samples[relay] += await round_trips(stream, per_round)
        return samples
    finally:
        for stream in streams.values():
            await stream.close()


async def _throughput(rig: RelayRig, repeats: int, total: int) -> dict[str, Any]:
    """MB/s per path, and the relay process's CPU milliseconds per MB relayed."""
    results: dict[str, list[float]] = {relay: [] for relay in RELAYS}
    cpu_ms_per_mb: dict[str, list[float]] = {"channels": [], "gateway": []}
    for _ in range(repeats):
        for relay in RELAYS:
            stream = await rig.open(relay)
            try:
                await throughput(stream, total // 8)  # warm-up
                server = {"channels": rig.daphne, "gateway": rig.gateway}.get(relay)
                pids = process_tree(server.pid) if server else []
                before = sum(cpu_s(pid) for pid in pids)
                results[relay].append(await throughput(stream, total))
                if server:
                    used = sum(cpu_s(pid) for pid in pids) - before
                    cpu_ms_per_mb[relay].append(used * 1000 / (total / 1e6))
            finally:
                await stream.close()
    return {"mb_s": results, "cpu_ms_per_mb": cpu_ms_per_mb}


async def _hold(rig: RelayRig, relay: str, sessions: int) -> tuple[list[Any], int]:
    """Open `sessions` consoles through `relay` (8 at a time) and keep them open."""
    opened: list[Any] = []
    failures = 0
    semaphore = asyncio.Semaphore(8)

    async def one() -> None:
        nonlocal failures
        async with semaphore:
            try:
                opened.append(await rig.open(relay))
            except Exception as exc:  # counted and reported, the rest go on
                failures += 1
                log(f"{relay}: a session failed to open: {exc!r}")

    await asyncio.gather(*(one() for _ in range(sessions)))
    return opened, failures


async def _memory(rig: RelayRig, relay: str, sessions: int) -> dict[str, Any]:
    server = rig.daphne if relay == "channels" else rig.gateway
    # One session first, so that lazily imported code and pools are in the baseline.
    warm = await rig.open(relay)
    await round_trips(warm, 5)
    await warm.close()
    await asyncio.sleep(2)
    before = rss_kib(server.pid)
    started = time.perf_counter()
    streams, failures = await _hold(rig, relay, sessions)
    open_s = time.perf_counter() - started
    for stream in streams:  # every session is alive and passes bytes
        await round_trips(stream, 1)
    await asyncio.sleep(3)  # idle
    result: dict[str, Any] = {"sessions": len(streams), "failed": failures, "open_s": open_s}
    if relay == "channels":
        after = rss_kib(server.pid)
        result.update(
            process_rss_before_kib=before,
            process_rss_kib=after,
            per_session_kib=(after - before) / max(1, len(streams)),
            per_session_total_rss_kib=after / max(1, len(streams)),
        )
    else:
        kids = children_of(server.pid)
        mems = [smaps_kib(pid) for pid in kids]
        result.update(
            listener_rss_kib=rss_kib(server.pid),
            processes=len(kids),
            per_session_kib=sum(m["rss"] for m in mems) / max(1, len(streams)),
            per_session_pss_kib=sum(m["pss"] for m in mems) / max(1, len(streams)),
            per_session_uss_kib=sum(m["uss"] for m in mems) / max(1, len(streams)),
        )
    for stream in streams:
        await stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and await sync_to_async(rig.open_sessions)():
        await asyncio.sleep(0.5)
    return result


def run(*, template: Template, host: Host, quick: bool) -> dict[str, Any]:
    sessions = 20 if quick else 200
    total = (16 if quick else 64) * 1024 * 1024
    rounds, per_round = (3, 50) if quick else (10, 200)
    with RelayRig(template) as rig:

        async def all_of_it() -> dict[str, Any]:
            log("relay: round-trip latency")
            latency = await _latency(rig, rounds, per_round)
            log("relay: throughput")
            mbps = await _throughput(rig, 1 if quick else 3, total)
            memory = {}
            for relay in ("channels", "gateway"):
                log(f"relay: {sessions} idle sessions through {relay}")
                memory[relay] = await _memory(rig, relay, sessions)
            return {"latency": latency, "throughput": mbps, "memory": memory}

        raw = asyncio.run(all_of_it())
    lat = {
        relay: {
            "p50_ms": percentile(v, 50),
            "p99_ms": percentile(v, 99),
            "samples": len(v),
        }
        for relay, v in raw["latency"].items()
    }
    for relay in ("channels", "gateway"):
        lat[relay]["added_p50_ms"] = lat[relay]["p50_ms"] - lat["raw"]["p50_ms"]
        lat[relay]["added_p99_ms"] = lat[relay]["p99_ms"] - lat["raw"]["p99_ms"]
    return {
        "echo_server": "bench/echo_server.py (RFB 3.8, VNC auth, echo as ServerCutText)",
        "sessions": sessions,
        "stream_bytes": total,
        "latency": lat,
        "throughput_mb_s": {relay: median(v) for relay, v in raw["throughput"]["mb_s"].items()},
        "throughput_samples": raw["throughput"]["mb_s"],
        "relay_cpu_ms_per_mb": {
            relay: median(v) for relay, v in raw["throughput"]["cpu_ms_per_mb"].items()
        },
        "memory": raw["memory"],
    }
