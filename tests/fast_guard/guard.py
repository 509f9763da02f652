"""What a fast test may not use, refused at run time: a libvirt connection other than the
in-process ``test://`` driver, and starting a server, a guest or a browser (daphne, Celery,
the console relays, QEMU, Chromium, Xvfb, remote-viewer, a lab host...).

The fast marker (tests/fast_layer.py) is derived from the fixtures a test uses; this guard
proves it right. Every refusal is also appended to the file named by ``REPORT_ENV``, so a
refusal that the code under test catches and swallows still fails the test.

Standard library only (libvirt when it is importable): Python processes that a fast test
starts load it through sitecustomize.py, before any of the project is importable.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import itertools
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

REPORT_ENV = "PORTAL_FAST_GUARD_REPORT"

# Programs (or `python -m` modules) that are servers, guests or browsers.
SERVER_PROGRAMS = frozenset({
    "daphne", "celery", "websockify", "uvicorn", "gunicorn", "redis-server", "prometheus",
    "chromium", "chromium-browser", "chrome", "Xvfb", "xvfb-run", "remote-viewer",
    "libvirtd", "virtqemud", "lab-host", "tcpdump", "dnsmasq",
})  # fmt: skip
MANAGE_SERVERS = frozenset({"runserver", "consoleproxy", "spiceproxy"})
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class SlowPartUsed(AssertionError):
    """A test marked fast used a server, a guest, a browser or the real libvirtd."""


def refuse(what: str) -> SlowPartUsed:
    """Record the refusal (for the test's teardown) and return the error to raise."""
    message = (
        f"a fast test used {what}. The fast marker comes from the fixtures a test uses "
        "(tests/fast_layer.py): use the fixture that provides it (local_host, celery_worker, "
        "portal_url, ...) or mark the test libvirt, browser or servers."
    )
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a", encoding="utf-8") as out:
            out.write(f"pid {os.getpid()}: {what}\n")
    return SlowPartUsed(message)


def uri_allowed(uri: str | None) -> bool:
    """Libvirt's in-process test driver (``test:///default`` or a node file), and the
    suite's refused host: a URI on loopback port 1, where nothing listens."""
    if uri is None:
        uri = os.environ.get("LIBVIRT_DEFAULT_URI")
    if not uri:
        return False
    if uri.startswith("test://"):
        return True
    try:
        parts = urlsplit(uri)
        return parts.hostname in LOOPBACK and parts.port == 1
    except ValueError:  # unparsable: libvirt refuses it without connecting
        return True


def server_in(args: Any) -> str:
    """What server, guest or browser the command `args` would start; "" for none."""
    if isinstance(args, (str, bytes, os.PathLike)):
        text = os.fsdecode(args)
        try:
            argv = shlex.split(text)
        except ValueError:
            argv = text.split()
    else:
        argv = [os.fsdecode(arg) for arg in args]
    names = [os.path.basename(arg) for arg in argv]
    for name in names:
        if name in SERVER_PROGRAMS or name.startswith("qemu-system"):
            return name
    if argv and "playwright" in argv[0]:
        return "Playwright's browser driver"
    if "manage.py" in names:
        after = names[names.index("manage.py") + 1 :]
        if after and after[0] in MANAGE_SERVERS:
            return f"manage.py {after[0]}"
    if names and names[0] == "ip" and "netns" in names:
        return "a network namespace (ip netns)"
    if "virsh" in names:
        uri = next((b for a, b in itertools.pairwise(argv) if a in ("-c", "--connect")), None)
        if not uri_allowed(uri):
            return f"virsh on {uri or 'the default URI'}"
    return ""


def _guarded_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def open_(uri: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if not uri_allowed(uri):
            raise refuse(f"a libvirt connection to {uri!r}")
        return original(uri, *args, **kwargs)

    return open_


class _GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        started = server_in(args)
        if started:
            raise refuse(f"a process that starts {started} ({args!r})")
        super().__init__(args, *rest, **kwargs)


Undo = list[tuple[Any, str, Any]]
LIBVIRT_OPENS = ("open", "openAuth", "openReadOnly")


def install() -> Undo:
    """Refuse the slow parts in this process; returns what `uninstall` puts back.

    libvirt is guarded once it is imported, never imported here: a process that would
    not load it (tests/hypervisor/test_hv_registry.py checks that) still does not."""
    undo: Undo = [(subprocess, "Popen", subprocess.Popen)]
    subprocess.Popen = _GuardedPopen  # type: ignore[misc]
    if "libvirt" in sys.modules:
        _guard_libvirt(sys.modules["libvirt"], undo)
    else:
        finder = _GuardLibvirtOnImport(undo)
        sys.meta_path.insert(0, finder)
        undo.append((sys, "meta_path", finder))  # uninstall takes the finder out
    return undo


def _guard_libvirt(libvirt: Any, undo: Undo) -> None:
    for name in LIBVIRT_OPENS:
        original = getattr(libvirt, name)
        undo.append((libvirt, name, original))
        setattr(libvirt, name, _guarded_open(original))


class _GuardLibvirtOnImport(importlib.abc.MetaPathFinder):
    """Guards libvirt's module right after it is first imported."""

    def __init__(self, undo: Undo) -> None:
        self.undo = undo

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "libvirt":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, undo = spec.loader, self.undo

        class Guarding(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                _guard_libvirt(module, undo)

        spec.loader = Guarding()
        return spec


def uninstall(undo: Undo) -> None:
    for owner, name, original in reversed(undo):
        if owner is sys and name == "meta_path":
            if original in sys.meta_path:
                sys.meta_path.remove(original)
        else:
            setattr(owner, name, original)


def install_in_child(argv: Sequence[str]) -> None:
    """sitecustomize's part: a process started to be a server stops at once; any other
    gets the guard."""
    started = server_in(list(argv))
    if started:
        sys.stderr.write(f"{refuse(f'a process that runs {started} ({list(argv)!r})')}\n")
        sys.stderr.flush()
        os._exit(3)  # SystemExit is not allowed out of sitecustomize
    install()
