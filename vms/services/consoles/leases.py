"""Console session leases: how the portal knows that a relay still carries a session.

A relay renews its session's lease in Redis while the session is open (every
`CONSOLE_RECHECK_S`) and drops it once the session's end is recorded. A relay process
that dies leaves an open session row and a lease that lapses; reconcile then closes the
row, so the user is no longer held at the session cap and the owner's notice goes away.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from django.conf import settings

from vms.services.consoles.store import redis_client

log = logging.getLogger(__name__)
KEY_PREFIX = "console-lease:"
MISSING_PREFIX = "console-lease-missing:"
MIN_LEASE_S = 30


def lease_seconds() -> int:
    """How long a lease outlives its last renewal: several re-check periods."""
    return max(MIN_LEASE_S, int(3 * float(settings.CONSOLE_RECHECK_S)) + 1)


def console_lease_renew(*, session_id: int, relay: str) -> None:
    """Mark the session as carried by `relay` for another lease period.

    Best effort: a Redis hiccup must not end a console (the next renewal re-creates the
    lease, and reaping waits for a lease to stay missing across two passes).
    """
    try:
        redis_client().set(f"{KEY_PREFIX}{session_id}", relay, ex=lease_seconds())
    except (OSError, redis.RedisError) as exc:
        log.warning("could not renew the lease of console session %s: %s", session_id, exc)


def console_lease_drop(*, session_id: int) -> None:
    try:
        redis_client().delete(f"{KEY_PREFIX}{session_id}", f"{MISSING_PREFIX}{session_id}")
    except (OSError, redis.RedisError) as exc:
        log.warning("could not drop the lease of console session %s: %s", session_id, exc)


def console_leases_lapsed(*, session_ids: list[int], now: datetime) -> set[int]:
    """Which of `session_ids` have had no lease for a whole lease period.

    A lease seen missing is first only noted: after a Redis restart (leases are not
    persisted) the relays re-create theirs within one re-check period, well before the
    next pass, so live consoles are never reaped.
    """
    if not session_ids:
        return set()
    client = redis_client()
    leases: list[bytes | None] = client.mget(  # type: ignore[assignment]
        [f"{KEY_PREFIX}{pk}" for pk in session_ids]
    )
    missing = [pk for pk, lease in zip(session_ids, leases, strict=True) if lease is None]
    if not missing:
        return set()
    first_seen: list[bytes | None] = client.mget(  # type: ignore[assignment]
        [f"{MISSING_PREFIX}{pk}" for pk in missing]
    )
    lapsed = set()
    for pk, seen in zip(missing, first_seen, strict=True):
        if seen is None:
            client.set(f"{MISSING_PREFIX}{pk}", now.timestamp(), ex=10 * lease_seconds())
        elif now.timestamp() - float(seen) >= lease_seconds():
            lapsed.add(pk)
    return lapsed
