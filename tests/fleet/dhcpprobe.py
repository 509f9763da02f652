"""A DHCP client's first step, run inside a lab host's namespace
(`ip netns exec dplab-NAME python3 tests/fleet/dhcpprobe.py BRIDGE SECONDS`): one
DHCPDISCOVER (broadcast flag set) out of BRIDGE, then the source address of every DHCP
answer (an OFFER to port 68 with our transaction id) seen within SECONDS, one a line.
Which servers answered tells whether a desktop could play DHCP server on that network.
"""

from __future__ import annotations

import secrets
import socket
import struct
import sys
import time

CLIENT_MAC = bytes.fromhex("525400abcdef")
COOKIE = bytes.fromhex("63825363")


def discover(xid: int) -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000,
                         bytes(4), bytes(4), bytes(4), bytes(4))  # fmt: skip
    chaddr = CLIENT_MAC + bytes(10)
    options = bytes([53, 1, 1, 255])  # DHCPDISCOVER, end
    return header + chaddr + bytes(64 + 128) + COOKIE + options


def main(bridge: str, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
    sock.bind(("0.0.0.0", 68))  # noqa: S104 - inside the lab host's namespace, on its bridge
    xid = secrets.randbits(32)
    sock.sendto(discover(xid), ("255.255.255.255", 67))
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (address, _port) = sock.recvfrom(2048)
        except TimeoutError:
            break
        if len(data) > 8 and data[0] == 2 and struct.unpack("!I", data[4:8])[0] == xid:
            print(address, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
