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
from typing import Any

import redis
from django.conf import settings

from vms.hypervisor import ConsoleEndpoint, HypervisorError
from vms.models import ConsoleSession, Desktop
from vms.selectors import SPICE_FILE_VALID_S, SPICE_SET_OPEN_ACTION
from vms.services.audit import audit_record
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
from vms.services.events import push_console_sessions
from vms.services.hosts import hypervisor_for

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
    host: str
    ports: frozenset[int]
    display_key: str = ""  # the display token's hash ("" matches no token)
    session: ConsoleSession | None = None
    spice_session_id: int | None = None  # named by QEMU on the set's main channel
    connections: int = 0  # open now
    opened: int = 0  # in all
    bytes_to_guest: int = 0
    bytes_from_guest: int = 0

    def names(self, host: str, port: int) -> bool:
        return host == self.host and port in self.ports


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
    """A one-off proxy credential for the file of `session`, bound to `endpoint` (its plain
    SPICE port: the proxy terminates the link, so it cannot carry QEMU's TLS port) and to
    `display_token`, the file's password."""
    token = secrets.token_urlsafe(32)
    grant = {
        "session": session.pk,
        "host": endpoint.host,
        "ports": [endpoint.port] if endpoint.port > 0 else [],
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


def spice_set_claim(*, token: str, host: str, port: int, source_ip: str | None) -> SpiceSet:
    """Open the set of a file with its first CONNECT, or refuse it (ProxyRefused)."""
    key = credential_key(token)
    grant = _grant(key)
    spice_set = SpiceSet(
        key=key,
        session_id=int(grant["session"]),
        host=grant["host"],
        ports=frozenset(grant["ports"]),
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
    if endpoint.host != spice_set.host or endpoint.port not in spice_set.ports:
        raise ProxyRefused(410, "The desktop's display moved; download a new file.")


def _record_open(spice_set: SpiceSet, source_ip: str | None) -> None:
    session = ConsoleSession.objects.select_related("desktop", "user").get(pk=spice_set.session_id)
    audit_record(
        action=SPICE_SET_OPEN_ACTION,
        actor=session.user,
        desktop=session.desktop,
        source_ip=source_ip,
        session=session.pk,
        spice_set=str(session.pk),
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
