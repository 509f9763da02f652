"""Test services for the network tests, run inside a lab host's namespace
(`ip netns exec dplab-NAME python3 tests/fleet/netservice.py ADDR:PORT ...`).

Each ADDR:PORT answers every connection with `hello PORT` and closes it. ADDR:PORT:blob:N
sends N bytes instead, then waits for the client to close, and prints to stdout
`sent N in S` (seconds from the first byte to the client's close): the throughput a
desktop really received. ADDR:PORT:udp:FILE appends `PORT from IP` to FILE for each UDP
datagram that arrives at PORT. Prints `ready` once every listener is bound; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

CHUNK = 64 * 1024


async def hello(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"hello {port}\n".encode())
    await writer.drain()
    writer.close()


async def blob(size: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    started = time.monotonic()
    left = size
    while left > 0:
        writer.write(b"\0" * min(CHUNK, left))
        left -= min(CHUNK, left)
        await writer.drain()
    writer.write_eof()
    await reader.read()  # the client's end (or its half-close)
    print(f"sent {size} in {time.monotonic() - started:.3f}", flush=True)
    writer.close()


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with open(self.path, "a") as out:
            out.write(f"{self.port} from {addr[0]}\n")


async def main(specs: list[str]) -> None:
    servers = []
    loop = asyncio.get_running_loop()
    for spec in specs:
        address, port, *mode = spec.split(":")
        if mode and mode[0] == "udp":
            recorder = Recorder(int(port), mode[1])
            await loop.create_datagram_endpoint(lambda r=recorder: r, (address, int(port)))
            continue
        if mode and mode[0] == "blob":
            size = int(mode[1])
            handler = lambda r, w, size=size: blob(size, r, w)  # noqa: E731
        else:
            handler = lambda r, w, port=int(port): hello(port, r, w)  # noqa: E731
        servers.append(await asyncio.start_server(handler, address, int(port)))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
