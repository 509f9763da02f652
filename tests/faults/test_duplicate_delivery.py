"""The same provisioning task run twice at once (two threads, two worker processes, a
message delivered again): one domain, one volume, one boot, the desktop running."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections

from portal.celery import app as celery_app
from tests.faults.support import assert_exactly_its_own, assert_quota_counts, desktop_row
from tests.fixtures import wait_for_status
from vms.models import AuditEvent, Desktop, DesktopStatus
from vms.services.desktops import lifecycle

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def assert_booted_once(desktop: Desktop) -> None:
    actions = list(
        AuditEvent.objects.filter(desktop_id=desktop.pk).values_list("action", flat=True)
    )
    assert actions.count("desktop.starting") == 1, actions
    assert actions.count("desktop.running") == 1, actions
    assert "desktop.error" not in actions, actions


def test_provisioning_run_by_four_threads_at_once(faulty_host, employee, demo_template) -> None:
    desktop = desktop_row(employee, demo_template, faulty_host, "racy")
    gate = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            gate.wait()
            lifecycle.desktop_provision(desktop_id=desktop.pk)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.RUNNING, desktop.last_error
    assert_exactly_its_own(desktop, faulty_host)
    assert_booted_once(desktop)
    assert_quota_counts(employee, [desktop])


def test_same_task_to_two_workers_and_delivered_again(
    faulty_host, start_worker, api_for, employee, demo_template
) -> None:
    workers = [start_worker("dup-a"), start_worker("dup-b")]
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    assert response.status_code == 202
    desktop_id = response.json()["id"]
    for _ in range(3):  # the launch's own message and three more copies of it
        celery_app.send_task(
            "vms.tasks.desktop_provision", args=[desktop_id], queue=faulty_host.queue_name
        )

    desktop = wait_for_status(desktop_id, DesktopStatus.RUNNING, timeout=60)
    names = [worker.name for worker in workers]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until every copy has been worked off
        inspect = celery_app.control.inspect(destination=names, timeout=1)
        busy = [
            *(inspect.active() or {}).values(),
            *(inspect.reserved() or {}).values(),
            *(inspect.scheduled() or {}).values(),  # a retry waiting for its countdown
        ]
        if not any(busy) and faulty_queue_empty(faulty_host.queue_name):
            break
        time.sleep(0.25)
    else:
        raise AssertionError("the duplicate tasks were not worked off")
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.RUNNING
    assert_exactly_its_own(desktop, faulty_host)
    assert_booted_once(desktop)
    assert_quota_counts(employee, [desktop])


def faulty_queue_empty(queue: str) -> bool:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL).llen(queue) == 0
