"""Which libvirt URIs a host may have: the transports the docs name, and no parameter that
picks a program, a socket or a weaker check (docs/hypervisors.md, "Host URIs").

libvirt's remote driver takes its transport from the scheme (``qemu+ext://``, ``qemu+unix``)
and its details from the query (``?command=``, ``?socket=``, ``?netcat=``, ``?no_verify=``):
an admin's typo or a stolen admin session could make every worker run a program of its
choosing, or talk to libvirt without checking whom. Only these are allowed:

- ``qemu:///system`` (or ``/session``), the local daemon over its unix socket;
- ``qemu+ssh://user@host/system`` with ``keyfile``, ``known_hosts`` and ``no_tty``;
- ``qemu+tls://host/system`` (and ``qemu://host/system``, which libvirt reaches over TLS)
  with ``pkipath``, the directory of the client's certificates;
- ``test:///default``, libvirt's in-process test driver; ``test:///<path>.xml`` (a node
  description the tests' and benches' simulated fleets write) only in a process whose
  environment has ``PORTAL_TEST_DRIVER_FILES=1`` (portal/test_settings.py, bench/settings.py):
  a portal never needs it, and it would have the worker parse any file an admin names.

Pure parsing: this module neither imports libvirt nor connects to anything.
"""

from __future__ import annotations

import os
import re
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from .errors import HypervisorError

__all__ = ["ALLOWED_PARAMETERS", "ALLOWED_TRANSPORTS", "check_libvirt_uri"]

_HELP: Final = "see docs/hypervisors.md"
_EXAMPLES: Final = "qemu:///system, qemu+ssh://root@hv1/system or qemu+tls://hv1/system"

# Transport (after the '+') -> the query parameters it may carry. "local" is a URI with
# neither transport nor host (the daemon's unix socket); with a host name and no transport,
# libvirt connects over TLS.
ALLOWED_PARAMETERS: Final[dict[str, frozenset[str]]] = {
    "local": frozenset(),
    "tls": frozenset({"pkipath"}),
    "ssh": frozenset({"keyfile", "known_hosts", "no_tty"}),
}
ALLOWED_TRANSPORTS: Final = ("", "ssh", "tls")
_PATH_PARAMETERS: Final = frozenset({"pkipath", "keyfile", "known_hosts"})
_WHY_NOT: Final[dict[str, str]] = {
    "command": "it names a program for the portal to run",
    "netcat": "it names a program for the host to run",
    "proxy": "it picks a helper program on the host",
    "socket": "it points libvirt at another socket",
    "no_verify": "it turns off the check of the host's identity",
    "known_hosts_verify": "it can turn off the check of the host's identity",
    "tls_priority": "it can weaken the TLS ciphers",
    "name": "it makes the host's daemon open another URI",
}
# A host name or an address (IPv6 without its brackets, as urlsplit gives it); never an
# option such as "-oProxyCommand=..." handed to ssh.
_HOST: Final = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}|[0-9a-f:.]+")
_USER: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")
_SAFE_PATH: Final = re.compile(r"/[A-Za-z0-9._/@+-]*")
# Each scheme's daemon-side paths ("/embed", "/session?root=..." or a test driver file
# would run a driver inside the worker itself).
_PATHS: Final[dict[str, frozenset[str]]] = {
    "qemu": frozenset({"/system", "/session"}),
    "test": frozenset({"/default"}),
}


def _test_driver_file(scheme: str, path: str) -> bool:
    """Whether `path` is a test driver's node description this process may load."""
    return (
        scheme == "test"
        and os.environ.get("PORTAL_TEST_DRIVER_FILES") == "1"
        and path.endswith(".xml")
        and _SAFE_PATH.fullmatch(path) is not None
        and "/../" not in path
    )


def _refuse(message: str) -> HypervisorError:
    return HypervisorError(f"{message} ({_HELP})", permanent=True)


def check_libvirt_uri(uri: str) -> None:
    """Raise a permanent ``HypervisorError`` that says why, when ``uri`` is not one of the
    allowed forms above. The URI itself is not repeated: it may name a management network."""
    if any(char.isspace() or not char.isprintable() for char in uri):
        raise _refuse("the host's URI must not contain spaces or control characters")
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname or "", parts.port  # port: ValueError when not a number
    except ValueError as exc:
        raise _refuse("the host's URI cannot be parsed") from exc
    scheme, _, transport = parts.scheme.partition("+")
    if scheme not in _PATHS:
        raise _refuse(f"'{scheme}' is not a libvirt scheme the portal serves")
    if transport not in ALLOWED_TRANSPORTS or (scheme == "test" and (transport or host)):
        raise _refuse(
            f"the transport '{transport}' is not allowed for a host; write the URI like {_EXAMPLES}"
        )
    if transport and not host:
        raise _refuse(f"a {scheme}+{transport} URI needs the host's name, like {_EXAMPLES}")
    if (host or port) and not _HOST.fullmatch(host):
        raise _refuse("the host's name in the URI is not a host name or an address")
    if parts.password is not None or (
        parts.username is not None and not _USER.fullmatch(parts.username)
    ):
        raise _refuse("the user in the URI must be a plain user name (no password)")
    if parts.path not in _PATHS[scheme] and not _test_driver_file(scheme, parts.path):
        paths = " or ".join(sorted(_PATHS[scheme]))
        raise _refuse(f"a {scheme} URI's path must be {paths}")
    if parts.fragment:
        raise _refuse("the host's URI must not have a fragment ('#...')")
    _check_parameters(parts.query, transport or ("tls" if host else "local"))


def _check_parameters(query: str, transport: str) -> None:
    allowed = ALLOWED_PARAMETERS[transport]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise _refuse("the host's URI has a query that cannot be parsed") from exc
    for key, value in pairs:
        if key not in allowed:
            why = _WHY_NOT.get(key, "the portal allows only parameters it knows to be safe")
            may = ", ".join(sorted(allowed)) or "none"
            raise _refuse(
                f"the URI parameter '{key}' is not allowed: {why} "
                f"(allowed with this transport: {may})"
            )
        if key in _PATH_PARAMETERS and not _SAFE_PATH.fullmatch(value):
            raise _refuse(f"the URI parameter '{key}' must be an absolute path")
        if key == "no_tty" and value not in ("0", "1"):
            raise _refuse("the URI parameter 'no_tty' must be 0 or 1")
