"""The SPICE proxy's rules: which HTTP CONNECT may reach which guest, and its record.

A `.vv` file carries a one-off proxy credential (in its `proxy=` URL) bound to the file's
console session and to the display endpoint libvirt reported when the file was made.
remote-viewer opens several connections (main, display, inputs, cursor...), each a
CONNECT with that credential: one connection set per file.

- The first CONNECT opens the set: within `SPICE_FILE_VALID_S` of the file's issue, to the
  endpoint the file names (and libvirt still reports), while the desktop runs and its user
  may see it. The set is recorded (`console.spice_connect`) and its session stays open,
  and in the owner's notice, while the set lives; the proxy renews the session's lease.
- Later CONNECTs join the open set (same endpoint, at most `MAX_SET_CONNECTIONS`).
- When the set's last connection closes, the session is closed with its byte counts and
  the file is used up: another CONNECT with it is refused (410).

The proxy terminates every channel's SPICE link (vms.console.spicelink): the file's
`password=` is a one-off display token, not the display's password. The client encrypts
it with the proxy's key; the proxy checks it against the grant (`spice_display_token_ok`,
only inside the file's one connection set) and gives QEMU a per-channel one-off password
it sets itself. The display password never leaves the server.

The file names neither the host's management address nor its name: its `host=` is the
proxy's own host name and its port a fixed one (`FILE_PORT`, `FILE_TLS_PORT`); the grant
alone knows the display libvirt reported. With `SPICE_TLS_DIR` (the portal's SPICE CA and
the proxy's certificate, made by scripts/setup.sh) the file names only the TLS port, with
`ca=`, `host-subject=` and `secure-channels=all`: remote-viewer speaks TLS to the proxy and
verifies its certificate, and the proxy speaks TLS to QEMU's `tls-port` (verified against
the same CA) wherever libvirt reports one.

The transport (`vms.console.spiceproxy`) moves the bytes and calls these functions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from cryptography import x509
from django.conf import settings

from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleSession, Desktop
from vms.selectors import SPICE_FILE_VALID_S
from vms.services.consoles.errors import (
    CLOSE_ENDED_BY_OWNER,
    CLOSE_STOPPED,
    ConsoleClosed,
    ConsoleRefused,
)
from vms.services.consoles.leases import console_lease_renew
from vms.services.consoles.sessions import console_session_close, console_session_keep
from vms.services.consoles.spice_channels import SPICE_MAIN
from vms.services.consoles.store import redis_client
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.desktops.events import push_console_sessions
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)
SPICE_PROXY_RELAY = "spice-proxy"  # what the proxy's leases say carries the session
GRANT_PREFIX = "spice-grant:"
USED_PREFIX = "spice-grant-used:"
# How long a used or expired credential is still told apart from one never issued.
GRANT_MEMORY_S = 3600
# remote-viewer opens main, display, inputs, cursor, playback, record, usbredir, webdav...
MAX_SET_CONNECTIONS = 16
PROXY_USER = "spice"
REDIS_FAILURES = (OSError, redis.RedisError)
# The ports a file names (the proxy maps them to the display the grant holds): plain SPICE,
# or TLS when the portal has a SPICE CA.
FILE_PORT, FILE_TLS_PORT = 5900, 5901
# The name in QEMU's SPICE certificate (scripts/setup.sh makes it), checked by the proxy.
DISPLAY_CERT_NAME = "spice-display.desktop-portal"
# Files in SPICE_TLS_DIR: the portal's CA, the proxy's certificate and key.
TLS_CA, TLS_PROXY_CERT, TLS_PROXY_KEY = "ca-cert.pem", "proxy-cert.pem", "proxy-key.pem"


class ProxyRefused(Exception):
    """Answer the CONNECT with HTTP `status` and a short `reason` (no secrets in it)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class SpiceSet:
    """One file's open connection set at the proxy, and what it carried."""

    key: str  # the credential's hash
    session_id: int
    host: str  # the display as libvirt reported it (never shown to the client)
    port: int  # QEMU's plain port (-1: none)
    tls_port: int | None = None  # QEMU's TLS port, where the proxy speaks TLS to QEMU
    name: str = ""  # the host the file names (the proxy's own name)
    client_tls: bool = False  # the file names only the TLS port: TLS to remote-viewer
    desktop_id: str = ""
    user_id: int = 0
    display_key: str = ""  # the display token's hash ("" matches no token)
    session: ConsoleSession | None = None
    spice_session_id: int | None = None  # named by QEMU on the set's main channel
    connections: int = 0  # open now
    opened: int = 0  # in all
    bytes_to_guest: int = 0
    bytes_from_guest: int = 0

    def names(self, host: str, port: int) -> bool:
        """Whether a CONNECT target is the address the file names."""
        return host == self.name and port == (FILE_TLS_PORT if self.client_tls else FILE_PORT)

    @property
    def guest_tls(self) -> bool:
        """Whether the proxy reaches QEMU on its TLS port."""
        return self.tls_port is not None


@dataclass(frozen=True)
class GrantOwner:
    """Whose file a credential is, read before the set is claimed (for the per-user cap
    and to run its blocking calls on its desktop's own thread)."""

    desktop_id: str
    user_id: int


def credential_key(token: str) -> str:
    """What the store keeps of a credential: its SHA-256, never the credential."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- issuing (the .vv file) ------------------------------------------------------------


def spice_display_token() -> str:
    """A file's `password=`: what remote-viewer answers the proxy's SPICE link with
    (192 bits; SPICE passwords are at most 60 bytes)."""
    return secrets.token_urlsafe(24)


def spice_grant_issue(
    *, session: ConsoleSession, endpoint: ConsoleEndpoint, display_token: str = ""
) -> str:
    """A one-off proxy credential for the file of `session`, bound to `endpoint` (the
    display libvirt reported; QEMU's TLS port is used where the portal has a SPICE CA) and
    to `display_token`, the file's password."""
    token = secrets.token_urlsafe(32)
    tls = spice_tls_dir() is not None
    grant = {
        "session": session.pk,
        "desktop": str(session.desktop_id),
        "user": session.user_id,
        "host": endpoint.host,
        "port": endpoint.port,
        "tls_port": endpoint.tls_port if tls else None,
        "name": spice_file_host(),
        "client_tls": tls,
        "display": credential_key(display_token) if display_token else "",
        "issued": time.time(),
    }
    try:
        redis_client().set(
            GRANT_PREFIX + credential_key(token), json.dumps(grant), ex=GRANT_MEMORY_S
        )
    except REDIS_FAILURES as exc:
        log.warning("console session %s: SPICE proxy grant not stored: %s", session.pk, exc)
        console_session_close(session_id=session.pk, reason="SPICE proxy unavailable")
        raise ConsoleRefused("The SPICE proxy cannot be reached right now. Try again.") from exc
    return token


def spice_proxy_url(token: str) -> str:
    """The `proxy=` value of a file: the portal's SPICE proxy with the file's credential."""
    scheme, rest = str(settings.SPICE_PROXY_URL).split("://", 1)
    return f"{scheme}://{PROXY_USER}:{token}@{rest}"


def spice_file_host() -> str:
    """The `host=` of every file: the proxy's own host name, not the desktop's host."""
    return str(urlsplit(str(settings.SPICE_PROXY_URL)).hostname)


def spice_tls_dir() -> Path | None:
    """The portal's SPICE TLS files (SPICE_TLS_DIR), or None when SPICE runs without TLS."""
    value = str(settings.SPICE_TLS_DIR)
    return Path(value) if value else None


def spice_file_address() -> dict[str, str]:
    """The keys of a file that say where and how remote-viewer connects: the TLS port, the
    portal's CA and the proxy certificate's subject (every channel TLS), or the plain port."""
    if spice_tls_dir() is None:
        return {"port": str(FILE_PORT)}
    ca, subject = _tls_identity(str(spice_tls_dir()))
    return {
        "tls-port": str(FILE_TLS_PORT),
        "secure-channels": "all",
        "ca": _escaped(ca),
        "host-subject": subject,
    }


def _escaped(pem: str) -> str:
    """A PEM for a .vv value: one line, with `\\n` for its line breaks (GKeyFile's escape)."""
    return pem.strip().replace("\n", "\\n")


@cache
def _tls_identity(directory: str) -> tuple[str, str]:
    """The portal CA's PEM and the proxy certificate's subject as remote-viewer compares it
    (`host-subject`: its RDNs in order, `key=value` joined by commas)."""
    ca = (Path(directory) / TLS_CA).read_text()
    proxy = x509.load_pem_x509_certificate((Path(directory) / TLS_PROXY_CERT).read_bytes())
    parts = []
    for rdn in proxy.subject.rdns:
        for attribute in rdn:
            value = str(attribute.value).replace("\\", "\\\\").replace(",", "\\,")
            parts.append(f"{attribute.rfc4514_attribute_name}={value}")
    return ca, ",".join(parts)


# --- admitting a CONNECT -----------------------------------------------------------------


def proxy_token(authorization: str | None) -> str:
    """The credential in a `Proxy-Authorization: Basic` header, or 407."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise ProxyRefused(407, "Open the .vv file the portal gave you.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ProxyRefused(407, "Malformed proxy credentials.") from None
    _user, _, token = decoded.partition(":")
    if not token:
        raise ProxyRefused(407, "Open the .vv file the portal gave you.")
    return token


def spice_grant_owner(*, token: str) -> GrantOwner:
    """Whose file a credential is (Redis only: no database, no libvirt), or ProxyRefused."""
    grant = _grant(credential_key(token))
    return GrantOwner(desktop_id=str(grant.get("desktop", "")), user_id=int(grant.get("user", 0)))


def spice_set_claim(*, token: str, host: str, port: int, source_ip: str | None) -> SpiceSet:
    """Open the set of a file with its first CONNECT, or refuse it (ProxyRefused)."""
    key = credential_key(token)
    grant = _grant(key)
    spice_set = SpiceSet(
        key=key,
        session_id=int(grant["session"]),
        host=grant["host"],
        port=int(grant.get("port", -1)),
        tls_port=grant.get("tls_port"),
        name=str(grant.get("name", "")),
        client_tls=bool(grant.get("client_tls", False)),
        desktop_id=str(grant.get("desktop", "")),
        user_id=int(grant.get("user", 0)),
        display_key=str(grant.get("display", "")),
    )
    if not spice_set.names(host, port):
        log.warning("SPICE proxy: session %s's file tried %s:%s", spice_set.session_id, host, port)
        raise ProxyRefused(403, "This file does not name that address.")
    if time.time() - float(grant["issued"]) > SPICE_FILE_VALID_S:
        raise ProxyRefused(410, "This file has expired; download a new one.")
    if not _mark_used(key):
        raise ProxyRefused(410, "This file was used already; download a new one.")
    _may_continue(spice_set.session_id)
    _endpoint_unchanged(spice_set)
    _record_open(spice_set, source_ip)
    spice_set.session = ConsoleSession.objects.get(pk=spice_set.session_id)
    return spice_set


def spice_display_token_ok(spice_set: SpiceSet, *, password: bytes) -> bool:
    """Whether a channel's SPICE ticket (decrypted: the password and a NUL) is the file's
    display token. The display's own password, or anything else, is not."""
    token = password.removesuffix(b"\0")
    if not spice_set.display_key or not token or b"\0" in token:
        return False
    try:
        offered = credential_key(token.decode())
    except UnicodeDecodeError:
        return False
    return hmac.compare_digest(offered, spice_set.display_key)


def spice_set_channel_refusal(spice_set: SpiceSet, *, channel_type: int, connection_id: int) -> str:
    """Why a channel of the set may not link (a log line), or "": the main channel starts a
    SPICE session, every later channel must name the session QEMU gave the set's main one."""
    if channel_type == SPICE_MAIN:
        return "" if connection_id == 0 else "a main channel joining another SPICE session"
    if spice_set.spice_session_id is None or connection_id != spice_set.spice_session_id:
        return "a channel of another SPICE session"
    return ""


def spice_set_join(spice_set: SpiceSet, *, host: str, port: int) -> None:
    """Let one more connection of remote-viewer into its open set, or refuse it."""
    if not spice_set.names(host, port):
        log.warning("SPICE proxy: session %s's set tried %s:%s", spice_set.session_id, host, port)
        raise ProxyRefused(403, "This file does not name that address.")
    if spice_set.connections >= MAX_SET_CONNECTIONS:
        raise ProxyRefused(429, "Too many connections for one console.")


def _grant(key: str) -> dict[str, Any]:
    try:
        raw: bytes | None = redis_client().get(GRANT_PREFIX + key)  # type: ignore[assignment]
    except REDIS_FAILURES as exc:
        log.warning("SPICE proxy: grants unreadable: %s", exc)
        raise ProxyRefused(503, "The portal cannot check this file right now.") from exc
    if raw is None:
        raise ProxyRefused(403, "Unknown or forgotten file; download a new one.")
    grant: dict[str, Any] = json.loads(raw)
    return grant


def _mark_used(key: str) -> bool:
    """Whether this call is the file's first use (the mark outlives any proxy process)."""
    try:
        return bool(redis_client().set(USED_PREFIX + key, "1", nx=True, ex=GRANT_MEMORY_S))
    except REDIS_FAILURES as exc:
        raise ProxyRefused(503, "The portal cannot check this file right now.") from exc


STATUS_OF_CLOSE = {CLOSE_STOPPED: 409, CLOSE_ENDED_BY_OWNER: 410}


def _may_continue(session_id: int) -> None:
    """The session is open, its user may still see the desktop, and it runs."""
    session = ConsoleSession.objects.filter(pk=session_id).first()
    if session is None or session.ended_at is not None:
        raise ProxyRefused(410, "This console session has ended; download a new file.")
    closed = console_session_keep(session_id=session_id, relay=SPICE_PROXY_RELAY)
    if closed is not None:
        raise ProxyRefused(STATUS_OF_CLOSE.get(closed.code, 403), closed.reason)


def _endpoint_unchanged(spice_set: SpiceSet) -> None:
    """The display still listens where the file says (libvirt's word, not the client's)."""
    desktop = Desktop.objects.select_related("host").get(console_sessions__pk=spice_set.session_id)
    if desktop.host is None:
        raise ProxyRefused(409, "The desktop is on no host.")
    try:
        endpoint = hypervisor_for(desktop.host).console_endpoint(name=desktop.domain_name)
    except HypervisorError as exc:
        log.warning("SPICE proxy: session %s: %s", spice_set.session_id, exc.message)
        raise ProxyRefused(502, "The desktop's display cannot be reached right now.") from exc
    if spice_set.guest_tls:
        moved = (endpoint.host, endpoint.tls_port) != (spice_set.host, spice_set.tls_port)
    else:
        moved = (endpoint.host, endpoint.port) != (spice_set.host, spice_set.port)
    if moved:
        raise ProxyRefused(410, "The desktop's display moved; download a new file.")


def _record_open(spice_set: SpiceSet, source_ip: str | None) -> None:
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=spice_set.session_id)
    audit_record(
        action=AuditVerb.CONSOLE_SPICE_CONNECT,
        actor=session.user,
        desktop=session.desktop,
        source_ip=source_ip,
        session=session.pk,
        spice_set=str(session.pk),
        client_tls=spice_set.client_tls,
        guest_tls=spice_set.guest_tls,
    )
    console_lease_renew(session_id=session.pk, relay=SPICE_PROXY_RELAY)
    push_console_sessions(desktop_id=session.desktop_id)


# --- while open, and the end ---------------------------------------------------------------


def spice_set_keep(spice_set: SpiceSet) -> ConsoleClosed | None:
    """The set's periodic re-check: None while it may go on (its lease renewed)."""
    return console_session_keep(session_id=spice_set.session_id, relay=SPICE_PROXY_RELAY)


def spice_set_end(spice_set: SpiceSet, *, reason: str) -> None:
    """The set's last connection closed: record the session's end and its bytes."""
    console_session_close(
        session_id=spice_set.session_id,
        reason=reason,
        bytes_to_guest=spice_set.bytes_to_guest,
        bytes_from_guest=spice_set.bytes_from_guest,
    )
