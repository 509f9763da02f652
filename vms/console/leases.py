"""Console session leases: how the portal knows that a relay still carries a session.

A relay renews its session's lease in Redis while the session is open (every
`CONSOLE_RECHECK_S`) and drops it once the session's end is recorded. A relay process
that dies leaves an open session row and a lease that lapses; reconcile then closes the
row, so the user is no longer held at the session cap and the owner's notice goes away.
"""

from __future__ import annotations

from django.conf import settings

from vms.console.tickets import redis_client

KEY_PREFIX = "console-lease:"
MIN_LEASE_S = 30


def lease_seconds() -> int:
    """How long a lease outlives its last renewal: several re-check periods."""
    return max(MIN_LEASE_S, int(3 * float(settings.CONSOLE_RECHECK_S)) + 1)


def console_lease_renew(*, session_id: int, relay: str) -> None:
    """Mark the session as carried by `relay` for another lease period."""
    redis_client().set(f"{KEY_PREFIX}{session_id}", relay, ex=lease_seconds())


def console_lease_drop(*, session_id: int) -> None:
    redis_client().delete(f"{KEY_PREFIX}{session_id}")


def console_leases_held(*, session_ids: list[int]) -> set[int]:
    """Which of `session_ids` a relay still holds a lease for."""
    if not session_ids:
        return set()
    values: list[bytes | None] = redis_client().mget(  # type: ignore[assignment]
        [f"{KEY_PREFIX}{pk}" for pk in session_ids]
    )
    return {pk for pk, value in zip(session_ids, values, strict=True) if value is not None}


def console_leases_count() -> int:
    """How many sessions relays carry right now (tests wait for zero before they end)."""
    return sum(1 for _ in redis_client().scan_iter(match=f"{KEY_PREFIX}*", count=500))
