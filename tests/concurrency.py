"""Race tests: many calls released at the same moment, each in a thread of its own (with
its own database connection, closed when it ends), as concurrent requests would be."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from django.db import connections


def outcomes_at_once(
    calls: Sequence[Callable[[], str]], *, refusals: tuple[type[Exception], ...]
) -> list[str]:
    """Each call's answer: what it returned, "refused" when it raised one of `refusals`,
    or "other: ..." for any other exception (so an assertion on the answers shows it)."""
    barrier = threading.Barrier(len(calls), timeout=60)
    outcomes: list[str] = []

    def run(call: Callable[[], str]) -> None:
        barrier.wait()
        try:
            outcomes.append(call())
        except refusals:
            outcomes.append("refused")
        except Exception as exc:
            outcomes.append(f"other: {exc!r}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
