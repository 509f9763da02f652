"""A VNC-like echo server: the server side of the RFB 3.8 handshake with VNC Authentication
(checked against the password the relay armed, see bench/echo_seam.py), then an echo that
answers every client message with a well-formed server message of the same size:

* ClientCutText (type 6, 8 + n bytes)        -> ServerCutText (type 3, 8 + n bytes)
* FramebufferUpdateRequest (type 3, 10 bytes) -> ServerCutText of 2 bytes (10 bytes)

Cut-text payloads stream through as they arrive (never buffered whole), so a stream of
large messages measures the byte pump, not this server. Run:
``python bench/echo_server.py PORT PASSWORD_FILE``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vms.console.vncauth import vnc_auth_response

WIDTH, HEIGHT = 1024, 768
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
NAME = b"dpb-echo"
SERVER_INIT = struct.pack(">HH", WIDTH, HEIGHT) + PIXEL_FORMAT + struct.pack(">I", len(NAME)) + NAME
READ_SIZE = 256 * 1024


class Echo:
    def __init__(self, password_file: Path) -> None:
        self.password_file = password_file
        self.sessions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if await self._handshake(reader, writer):
                self.sessions += 1
                await self._echo(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"RFB 003.008\n")
        if await reader.readexactly(12) != b"RFB 003.008\n":
            return False
        writer.write(b"\x01\x02")  # one security type: VNC Authentication
        if await reader.readexactly(1) != b"\x02":
            return False
        challenge = os.urandom(16)
        writer.write(challenge)
        response = await reader.readexactly(16)
        password = self.password_file.read_text().strip() if self.password_file.exists() else ""
        if not password or response != vnc_auth_response(password, challenge):
            reason = b"Authentication failed"
            writer.write(struct.pack(">I", 1) + struct.pack(">I", len(reason)) + reason)
            await writer.drain()
            return False
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # ClientInit (shared flag)
        writer.write(SERVER_INIT)
        await writer.drain()
        return True

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        payload_left = 0  # bytes of a cut text still to pass through
        while data := await reader.read(READ_SIZE):
            out = bytearray()
            if payload_left:
                passed = data[:payload_left]
                out += passed
                payload_left -= len(passed)
                data = data[len(passed) :]
            buffer += data
            while buffer and not payload_left:
                kind = buffer[0]
                if kind == 3:  # FramebufferUpdateRequest
                    if len(buffer) < 10:
                        break
                    del buffer[:10]
                    out += b"\x03\x00\x00\x00" + struct.pack(">I", 2) + b"ok"
                elif kind == 6:  # ClientCutText
                    if len(buffer) < 8:
                        break
                    (length,) = struct.unpack_from(">I", buffer, 4)
                    out += b"\x03\x00\x00\x00" + bytes(buffer[4:8])
                    body = bytes(buffer[8 : 8 + length])
                    out += body
                    payload_left = length - len(body)
                    del buffer[: 8 + len(body)]
                else:
                    raise ConnectionError(f"the echo server does not speak message type {kind}")
            if out:
                writer.write(out)
                await writer.drain()


async def main(port: int, password_file: Path) -> None:
    echo = Echo(password_file)
    server = await asyncio.start_server(echo.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2])))
