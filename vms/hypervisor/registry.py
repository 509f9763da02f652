"""Which backend serves which kind of hypervisor host, chosen by the host's URI scheme.

A host is named by a URI (``Host.uri``). The scheme before any ``+`` picks the backend, as
in libvirt's own URIs, where the part after ``+`` is only the transport:
``qemu:///system``, ``qemu+ssh://root@hv1/system`` and ``qemu+tls://hv1/system`` are all
served by the backend registered for ``qemu``.

A backend may also register a check of its URIs (``uri_check``): the libvirt backend allows
only the transports and parameters the docs name (``libvirt_uri``), so no host's URI makes
a worker run a program. ``backend_for`` applies it, so the admin's form, the command line
and every connection (a heartbeat too) refuse such a URI before anything is run.

A new kind of host is one module that subclasses ``Hypervisor`` and calls
``register_backend`` when it is imported; a backend shipped with the portal is also listed
in ``BUILTIN_BACKENDS``. Those are imported on the first lookup, not with this package, so
code that only catches ``HypervisorError`` or builds a ``DomainSpec`` never loads libvirt.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from .base import Hypervisor
from .errors import HypervisorError

__all__ = [
    "BUILTIN_BACKENDS",
    "BackendFactory",
    "UriCheck",
    "backend_for",
    "get_hypervisor",
    "register_backend",
    "registered_schemes",
    "uri_scheme",
]

BackendFactory = Callable[[str], Hypervisor]
# Raises a permanent HypervisorError that says why a URI may not be used; connects nowhere.
UriCheck = Callable[[str], None]

# Modules that register the backends shipped with the portal (imported on first lookup).
BUILTIN_BACKENDS: Final[tuple[str, ...]] = ("vms.hypervisor.libvirt_backend",)

_HELP: Final = "see docs/hypervisors.md"
_SCHEME: Final = re.compile(r"[a-z][a-z0-9.-]*")

_factories: dict[str, BackendFactory] = {}
_checks: dict[str, UriCheck] = {}
_instances: dict[str, Hypervisor] = {}
_lock = threading.Lock()
_builtins_loaded = False


def uri_scheme(uri: str) -> str:
    """The backend part of a URI's scheme, lower case: ``QEMU+ssh://h/system`` -> ``qemu``.

    Empty when the URI has no scheme.
    """
    try:
        scheme = urlsplit(uri).scheme  # lower-cased by urlsplit
    except ValueError:  # e.g. an unbalanced '[' in an IPv6 host
        return ""
    return scheme.split("+", 1)[0]


def register_backend(
    schemes: tuple[str, ...], factory: BackendFactory, *, uri_check: UriCheck | None = None
) -> None:
    """Serve hosts whose URI scheme is one of ``schemes`` with ``factory(uri)``.

    ``factory`` must not connect to anything: ``get_hypervisor`` calls it to select a
    backend, under a lock, and the backend connects on first use. ``uri_check``, when given,
    vets every URI of those schemes before the factory is chosen. Registering the same
    factory again is a no-op; a scheme that another factory already serves is refused.
    """
    if isinstance(schemes, str):
        raise TypeError("schemes must be a tuple of strings, e.g. ('qemu',)")
    for scheme in schemes:
        if not _SCHEME.fullmatch(scheme):
            raise ValueError(
                f"{scheme!r} is not a backend scheme (lower case, no '+', e.g. 'qemu')"
            )
    with _lock:
        for scheme in schemes:
            current = _factories.get(scheme)
            if current is not None and current is not factory:
                raise ValueError(f"URI scheme {scheme!r} is already served by {current!r}")
        for scheme in schemes:
            _factories[scheme] = factory
            if uri_check is not None:
                _checks[scheme] = uri_check


def _load_builtins() -> None:
    """Import the shipped backends once (they register themselves).

    Not under ``_lock``: a backend registers while it is being imported, and a thread that
    imports it directly holds the import lock while it waits for ours.
    """
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_BACKENDS:
            importlib.import_module(module)
        _builtins_loaded = True


def registered_schemes() -> tuple[str, ...]:
    """Every URI scheme some backend serves, sorted."""
    _load_builtins()
    with _lock:
        return tuple(sorted(_factories))


def backend_for(uri: str) -> BackendFactory:
    """The factory registered for ``uri``'s scheme, once the backend's ``uri_check`` (if
    any) has passed the URI.

    Raises a permanent ``HypervisorError`` (retrying cannot help: the URI is wrong, or this
    portal has no backend for that kind of host). The URI itself is not repeated in the
    message: it may name a management network that only admins should see.
    """
    _load_builtins()
    scheme = uri_scheme(uri)
    with _lock:
        factory = _factories.get(scheme)
        check = _checks.get(scheme)
        known = ", ".join(sorted(_factories))
    if factory is not None:
        if check is not None:
            check(uri)
        return factory
    if not scheme:
        raise HypervisorError(
            f"the host's URI has no scheme (or cannot be parsed); write it like qemu:///system or "
            f"qemu+ssh://root@hv1/system (this portal serves: {known}; {_HELP})",
            permanent=True,
        )
    raise HypervisorError(
        f"no hypervisor backend serves '{scheme}' URIs (this portal serves: {known}); "
        f"correct the host's URI or add a backend ({_HELP})",
        permanent=True,
    )


def get_hypervisor(uri: str) -> Hypervisor:
    """The (process-wide, cached) hypervisor for a host's URI, from the registered backend.

    Cheap to call and never connects by itself: a backend connects on first use (and, for
    libvirt, again after ``fork()`` or a daemon restart), so the returned object can be kept
    across Celery tasks. An unknown scheme raises a permanent ``HypervisorError``.
    """
    with _lock:
        hv = _instances.get(uri)
    if hv is not None:
        return hv
    factory = backend_for(uri)
    with _lock:
        hv = _instances.get(uri)
        if hv is None:
            hv = factory(uri)
            _instances[uri] = hv
        return hv
