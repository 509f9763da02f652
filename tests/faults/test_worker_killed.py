"""A Celery worker SIGKILLed in the middle of provisioning.

The desktop lives on host 'faulty', whose queue only the test's own worker consumes, so the
session-wide worker is never touched. Acks are late and a lost worker's task is rejected:

* Only the pool process dies: the main process requeues the message at once and the
  desktop comes up without any help.
* The whole worker dies: the message stays unacknowledged until Redis' visibility timeout
  (an hour), so after a restart, reconcile's requeue of stalled desktops finishes the job.

Either way the desktop ends `running` with exactly one domain and one volume, and the
quota counts it once.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest

from tests.faults.support import assert_exactly_its_own, assert_quota_counts, wait_until
from tests.fixtures import wait_for_status
from vms.models import Desktop, DesktopStatus
from vms.services.fleet import reconcile
from vms.services.fleet.reconcile import reconcile_host

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def reached(desktop_id: object, step: str) -> bool:
    """Whether provisioning got to `step` (a progress label, or the `starting` state)."""
    status, progress = Desktop.objects.values_list("status", "progress").get(pk=desktop_id)
    if step == "starting":
        return status in (DesktopStatus.STARTING, DesktopStatus.RUNNING)
    return progress == step or status != DesktopStatus.PROVISIONING


# Cut points, and what libvirt held at the cut in practice: "cloning" nothing yet,
# "defining" the volume only, "starting" the volume and the defined, not yet started domain.
@pytest.mark.parametrize("cut_at", ["cloning", "defining", "starting"])
def test_whole_worker_killed_mid_provisioning_is_finished_by_reconcile(
    cut_at, faulty_host, start_worker, api_for, employee, demo_template, monkeypatch
) -> None:
    worker = start_worker()
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    assert response.status_code == 202, response.content
    desktop_id = response.json()["id"]

    wait_until(lambda: reached(desktop_id, cut_at), timeout=60, what=cut_at)
    worker.kill()
    cut = Desktop.objects.get(pk=desktop_id)
    assert cut.status != DesktopStatus.RUNNING, "the worker finished before it was cut"

    start_worker()  # a fresh worker: the killed one's message is still unacknowledged
    monkeypatch.setattr(reconcile, "STALL_AFTER", timedelta(0))
    report = reconcile_host(host=faulty_host)
    assert report.requeued == [cut.domain_name]
    assert report.removed_domains == report.removed_volumes == []

    desktop = wait_for_status(desktop_id, DesktopStatus.RUNNING, timeout=60)
    assert desktop.progress == "ready"
    assert desktop.last_error == ""
    assert_exactly_its_own(desktop, faulty_host)
    assert_quota_counts(employee, [desktop])
    assert reconcile_host(host=faulty_host) == reconcile.ReconcileReport()  # consistent

    assert api_for(employee).delete(f"/api/desktops/{desktop_id}/").status_code == 202
    wait_for_status(desktop_id, DesktopStatus.DELETED, timeout=60)
    assert_quota_counts(employee, [])


@pytest.mark.parametrize("cut_at", ["defining", "starting"])
def test_pool_process_killed_mid_provisioning_is_redelivered(
    cut_at, faulty_host, start_worker, api_for, employee, demo_template
) -> None:
    worker = start_worker()
    (child,) = worker.pool_children()
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    desktop_id = response.json()["id"]

    wait_until(lambda: reached(desktop_id, cut_at), timeout=60, what=cut_at)
    os.kill(child, signal.SIGKILL)
    assert Desktop.objects.get(pk=desktop_id).status != DesktopStatus.RUNNING

    # No reconcile: the worker's main process rejects the lost task back onto the queue.
    desktop = wait_for_status(desktop_id, DesktopStatus.RUNNING, timeout=60)
    assert desktop.progress == "ready"
    assert child not in worker.pool_children()
    assert_exactly_its_own(desktop, faulty_host)
    assert_quota_counts(employee, [desktop])
    assert reconcile_host(host=faulty_host) == reconcile.ReconcileReport()
