"""Hand work to the Celery workers once the database change that asks for it commits.

Tasks are sent by name so that services never import the task module (tasks import
services, not the other way round).

Every send opens its own connection to the broker the settings name at that moment,
instead of using the Celery app's connection pool, which is bound to the URL in force when
it was first used. A fresh connection per send (user actions are rare) never carries a
stale socket across a Redis restart, and costs one local TCP connect. The beat's rounds,
one task for each host, share one connection per round (`enqueue_tasks`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import redis
from django.db import transaction
from kombu.exceptions import OperationalError

from portal.celery import app as celery_app
from vms.models import Desktop
from vms.services.core.errors import ServiceUnavailable
from vms.services.desktops.actions import DesktopAction

log = logging.getLogger(__name__)


def broker_url() -> str:
    """The broker tasks go to (the Celery app reads CELERY_BROKER_URL from the settings)."""
    return str(celery_app.conf.broker_write_url or celery_app.conf.broker_url)


def broker_check() -> None:
    """Raise ServiceUnavailable when the broker does not answer within a second.

    Called before an action writes anything, so that a down broker refuses the action
    instead of leaving a desktop waiting for work that was never queued.
    """
    client = redis.Redis.from_url(broker_url(), socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            "The task queue is unavailable right now; nothing was changed. Try again shortly."
        ) from exc
    finally:
        client.close()


def enqueue_desktop_task(action: DesktopAction, *, desktop: Desktop) -> None:
    """Send the action's task `vms.tasks.desktop_<action>(desktop_id)` to the desktop's
    host queue after commit (its long queue for long work)."""
    host = getattr(desktop, action.queue_of)
    assert host is not None, "a desktop is placed on a host before work is queued"
    name = f"vms.tasks.{action.task_name}"
    queue = host.long_queue_name if action.runs_long(desktop) else host.queue_name
    transaction.on_commit(partial(_send, name, str(desktop.pk), queue))


def _send(name: str, desktop_id: str, queue: str) -> None:
    try:
        with celery_app.connection_for_write(broker_url()) as connection:
            celery_app.send_task(name, args=[desktop_id], queue=queue, connection=connection)
    except OperationalError:
        # The row already says what should happen; reconcile re-queues stalled desktops.
        log.warning("could not queue %s for desktop %s; reconcile will retry", name, desktop_id)


def enqueue_task(
    name: str, *args: object, queue: str = "portal", expires_s: float | None = None
) -> None:
    """Send task `name(*args)` to `queue` once the current transaction commits; a task
    with `expires_s` is dropped by the worker if it could not start within that time."""
    transaction.on_commit(partial(_send_task, name, args, queue, expires_s))


def enqueue_tasks(
    name: str, calls: Sequence[tuple[str, tuple[object, ...]]], *, expires_s: float | None = None
) -> None:
    """Send task `name` once for each (queue, args) of `calls` once the current transaction
    commits, all over one broker connection: the beat's rounds send one task to each host's
    queue, and a connection for each made a round over 100 hosts take 0.4 s
    (docs/scale.md). A round cut short by the broker is logged; the next round sends again."""
    transaction.on_commit(partial(_send_tasks, name, list(calls), expires_s))


def _send_tasks(
    name: str, calls: list[tuple[str, tuple[object, ...]]], expires_s: float | None
) -> None:
    sent = 0
    try:
        with celery_app.connection_for_write(broker_url()) as connection:
            for queue, args in calls:
                celery_app.send_task(
                    name, args=list(args), queue=queue, connection=connection, expires=expires_s
                )
                sent += 1
    except OperationalError:
        log.warning("could not queue %s: sent %d of %d", name, sent, len(calls))


def _send_task(name: str, args: tuple[object, ...], queue: str, expires_s: float | None) -> None:
    try:
        with celery_app.connection_for_write(broker_url()) as connection:
            celery_app.send_task(
                name, args=list(args), queue=queue, connection=connection, expires=expires_s
            )
    except OperationalError:
        log.warning("could not queue %s%s on %s", name, args, queue)
