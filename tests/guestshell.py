"""Drive a guest through the root shell on its serial console, over libvirt's console
stream (`virDomainOpenConsole`), so that tests read what commands print instead of
reading the screen by OCR. It works for any host the tests reach, lab hosts included.

The demo guest (guest/inittab) runs `-/bin/sh` on ttyS0. Each command is framed by two
markers that the shell prints; the markers are written split by a backslash, so the echo
of the typed line never matches them. Not by quotes: a line cut while the guest boots
could leave a quote open, and every later line, with its quotes in pairs, would only
continue the string (the shell answers "> " for ever).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from vms.hypervisor.connection import silence_libvirt_stderr

# Terminal control sequences (ash asks for the cursor position at each prompt) and
# carriage returns: nothing a test wants to compare.
_PROMPT = r"[\w.-]+:[^\n]*# "  # the demo guest's PS1, '\h:\w# '
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")

# How long a demo guest may take from start to its shell: 8 CPU-seconds under TCG, and with
# the suite's workers booting guests beside it on 2 cores a boot took over 40 s.
GUEST_BOOT_S = 120.0


# How long closing a console waits for its stream to end (see GuestShell.close).
CLOSE_S = 15.0
# Connections of consoles whose stream would not end: kept referenced, never closed while
# a call may still be in them.
_stuck: list[libvirt.virConnect] = []


class GuestShellError(AssertionError):
    """The guest's shell did not answer in time, or a command failed."""


class GuestShell:
    """The serial-console shell of one running domain.

    The console stream is blocking, read by a thread of its own: a non-blocking stream on a
    remote connection only moves data while some other call is in flight, since these
    tests run no libvirt event loop."""

    def __init__(self, *, uri: str, domain: str) -> None:
        silence_libvirt_stderr()
        self._conn = libvirt.open(uri)
        self._stream = self._conn.newStream(0)
        # FORCE: take the console over from a session a previous test left open.
        self._conn.lookupByName(domain).openConsole(
            None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE
        )
        self._buffer = ""
        self._closed = False
        self._end = "the console closed"
        self._arrived = threading.Condition()
        self._serial = itertools.count(1)
        self._reader = threading.Thread(target=self._read, name=f"console-{domain}", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """End the console stream and its reader. The abort runs in a thread of its own,
        waited for a bounded time: once, in a full run, it never returned while the reader
        sat in its blocking recv, and the whole suite stood still behind it for 18 minutes.
        A stream that will not end is left to the guest's tear-down (destroying the guest
        ends it on libvirtd's side); its connection is kept, not closed under a call."""
        aborter = threading.Thread(target=self._abort, name="console-abort", daemon=True)
        aborter.start()
        aborter.join(timeout=CLOSE_S)
        self._reader.join(timeout=CLOSE_S)
        if aborter.is_alive() or self._reader.is_alive():
            _stuck.append(self._conn)
            return
        self._conn.close()

    def _abort(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # the guest may be gone already
            self._stream.abort()

    def _read(self) -> None:
        try:
            while data := self._stream.recv(65536):
                assert isinstance(data, bytes)
                with self._arrived:
                    self._buffer += _CONTROL.sub("", data.decode("utf-8", "replace"))
                    self._arrived.notify_all()
        except libvirt.libvirtError as err:
            # Aborted by close(), or the guest went away: both end the stream, and a
            # wait that was still on says why.
            self._end = f"the console closed: {err.get_error_message()}"
        finally:
            with self._arrived:
                self._closed = True
                self._arrived.notify_all()

    def _send(self, text: str) -> None:
        payload = text.encode()
        while payload:
            payload = payload[self._stream.send(payload) :]

    def wait_for(self, pattern: str, *, timeout: float = 60.0) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in what the console printed, and
        consume everything up to the end of the match."""
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not (found := wanted.search(self._buffer)):
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = self._end if self._closed else f"{timeout:.0f} s passed"
                    tail = self._buffer[-400:]
                    raise GuestShellError(f"no {pattern!r} on the console ({why}): {tail!r}")
                self._arrived.wait(left)
            self._buffer = self._buffer[found.end() :]
            return found

    def line(self, *, timeout: float = 30.0) -> str:
        """The next line the guest writes on its serial console."""
        return self.wait_for(r"([^\n]*)\n", timeout=timeout).group(1)

    def wait_ready(self, *, timeout: float = GUEST_BOOT_S) -> None:
        """Wait until the shell answers (the guest may still be booting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run("true", timeout=5.0)
                return
            except GuestShellError:
                if time.monotonic() > deadline:
                    raise

    def run(self, command: str, *, timeout: float = 30.0, check: bool = True) -> str:
        """Run `command` in the guest's shell; return what it printed (without the
        shell's echo). With `check`, a non-zero exit status raises."""
        n = next(self._serial)
        begin, end = f"__BEGIN_{n}__", f"__END_{n}__"
        self._send(f"echo {begin[:4]}\\{begin[4:]}; {command}; echo {end[:4]}\\{end[4:]} $?\n")
        self.wait_for(rf"{begin}\n", timeout=timeout)
        found = self.wait_for(rf"(?s)(.*?){end} (\d+)\n", timeout=timeout)
        output, status = found.group(1), int(found.group(2))
        self.wait_for(_PROMPT, timeout=timeout)  # idle again: what follows is news
        if check and status != 0:
            raise GuestShellError(f"{command!r} exited with {status}: {output!r}")
        return output


@contextmanager
def guest_shell(
    uri: str, domain: str, *, ready_timeout: float = GUEST_BOOT_S
) -> Iterator[GuestShell]:
    """The serial-console shell of `domain` on the libvirt at `uri`, once it answers."""
    shell = GuestShell(uri=uri, domain=domain)
    try:
        shell.wait_ready(timeout=ready_timeout)
        yield shell
    finally:
        shell.close()


def eth0_address(sh: GuestShell, timeout: float = 60) -> str:
    """The guest's eth0 IPv4 address once its DHCP client has one (polled through its
    shell: the guest announces no event the test could wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", sh.run("ip -4 addr show eth0"))
        if found:
            return found.group(1)
        time.sleep(1)
    raise AssertionError("the guest got no DHCP lease")
