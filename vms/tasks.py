"""Celery tasks: thin wrappers that take ids and call a service.

All are idempotent (the services check the state first) and acknowledged late, so a
worker killed mid-task leaves the message for another worker. Transient hypervisor
errors retry with exponential backoff; when the retries run out the desktop goes to
`error` with the last message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from vms.hypervisor import HypervisorError
from vms.models import Host
from vms.services import consoles as console_services
from vms.services.core import audit, queue
from vms.services.core.locks import DesktopBusy
from vms.services.desktops import thumbnails
from vms.services.desktops.actions import ACTIONS, DesktopAction, action_worker
from vms.services.desktops.worker import desktop_fail
from vms.services.fleet import heartbeat, membership, reconcile, recovery
from vms.services.metrics import sampling
from vms.services.networks import desktop_networks

log = logging.getLogger(__name__)
MAX_RETRIES = 6


def _run(task: Task[Any, Any], desktop_id: str, work: Callable[[], None], *, cleanup: bool) -> None:
    try:
        work()
    except DesktopBusy as exc:
        # Another run holds the desktop (a duplicate delivery): come back when it is done.
        # Nothing failed, so running out of retries leaves the desktop to reconcile.
        if task.request.retries >= MAX_RETRIES:
            log.warning("giving up on %s: %s", task.name, exc)
            return
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 60)) from exc
    except HypervisorError as exc:
        if task.request.retries >= MAX_RETRIES:
            desktop_fail(desktop_id=desktop_id, message=exc.message, cleanup=cleanup)
            return
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 60)) from exc


def _desktop_task(action: DesktopAction) -> Task[Any, Any]:
    """The Celery task `vms.tasks.desktop_<action>`: run the action's worker function."""
    worker = action_worker(action)

    def run(self: Task[Any, Any], desktop_id: str) -> None:
        _run(self, desktop_id, lambda: worker(desktop_id=desktop_id, **action.worker_kwargs),
             cleanup=action.undo_on_failure)  # fmt: skip

    run.__name__ = run.__qualname__ = action.task_name
    task: Task[Any, Any] = shared_task(
        bind=True, acks_late=True, max_retries=MAX_RETRIES, name=f"vms.tasks.{action.task_name}"
    )(run)
    return task


# One task per action of the table (vms.services.desktops.actions), named after it.
DESKTOP_TASKS: dict[str, Task[Any, Any]] = {name: _desktop_task(a) for name, a in ACTIONS.items()}
globals().update({task.__name__: task for task in DESKTOP_TASKS.values()})


@shared_task(acks_late=True)
def reconcile_all_hosts() -> dict[str, str]:
    """Reconcile every enabled host; a host that cannot be reached is reported, not fatal."""
    results = {}
    # Read once for all hosts: where the pool is shared, each host lists every disk.
    volumes_live = reconcile.volumes_in_use()
    for host in Host.objects.filter(enabled=True):
        try:
            report = reconcile.reconcile_host(host=host, volumes_live=volumes_live)
            results[host.name] = repr(report)
        except HypervisorError as exc:
            log.warning("reconcile skipped host %s: %s", host.name, exc.message)
            results[host.name] = f"unreachable: {exc.message}"
    return results


@shared_task(acks_late=True)
def network_remove(host_id: int, name: str, filter_name: str) -> bool:
    """Remove a deleted network from one host (run by that host's worker)."""
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        return False
    desktop_networks.network_remove_from_host(host=host, name=name, filter_name=filter_name)
    return True


@shared_task(acks_late=True)
def networks_refresh(host_id: int) -> list[str]:
    """Define one host's networks and guards again (the fleet or a guard changed)."""
    host = Host.objects.filter(pk=host_id, enabled=True).first()
    if host is None:
        return []
    return desktop_networks.networks_ensure(host=host)


@shared_task(acks_late=True)
def apply_audit_retention() -> dict[str, int]:
    """Remove audit rows older than AUDIT_RETENTION_DAYS (the only path that deletes any)."""
    return audit.audit_retention_apply()


@shared_task(acks_late=True)
def heartbeat_all_hosts() -> dict[str, object]:
    """The beat's round: ask each host's own worker for a heartbeat (on its queue, so a
    host whose worker or libvirtd is gone stays silent), then mark silent hosts down and
    start their recovery."""
    # A heartbeat that waited in the queue still counts until the host would go down.
    expires_s = float(settings.HOST_DOWN_AFTER_S)
    hosts = Host.objects.filter(enabled=True)
    queue.enqueue_tasks("vms.tasks.host_heartbeat", [(h.queue_name, (h.pk,)) for h in hosts],
                        expires_s=expires_s)  # fmt: skip
    for host in heartbeat.hosts_silent():
        heartbeat.host_mark_down(host=host)
    resent = recovery.recovering_resend()  # those already on their way, before new ones
    done = {host.name: recovery.host_recovery_start(host=host) for host in recovery.hosts_down()}
    return {"resent": resent, **done}


@shared_task(acks_late=True)
def host_heartbeat(host_id: int) -> bool:
    """One host's heartbeat, run by that host's worker."""
    host = Host.objects.filter(pk=host_id).first()
    return host is not None and heartbeat.host_heartbeat(host=host)


@shared_task(bind=True, acks_late=True)
def host_drain(self: Task[Any, Any], host_id: int, actor_id: int) -> bool:
    """One pass of draining a host in maintenance; it comes back until the host is empty."""
    left = membership.host_drain_pass(host_id=host_id, actor_id=actor_id)
    if left and self.request.retries < membership.DRAIN_MAX_PASSES:
        raise self.retry(
            countdown=membership.DRAIN_PASS_DELAY_S, max_retries=membership.DRAIN_MAX_PASSES
        )
    return left


@shared_task(acks_late=True)
def refresh_thumbnails() -> int:
    """The beat's round of screenshots for the pages (never taken while a page renders):
    one task on each enabled host's own queue, as for the heartbeat. In one process, 100
    hosts' running desktops did not fit the 20 s round (docs/scale.md). Returns how many
    hosts were asked."""
    return _on_each_host("vms.tasks.host_thumbnails", schedule="thumbnails")


def _on_each_host(task_name: str, *, schedule: str) -> int:
    """Queue `task_name(host_id)` on each enabled host's own queue, expiring after one
    period of beat schedule `schedule`; how many hosts were asked."""
    interval = float(settings.CELERY_BEAT_SCHEDULE[schedule]["schedule"])
    hosts = list(Host.objects.filter(enabled=True).only("pk", "name"))
    queue.enqueue_tasks(task_name, [(h.queue_name, (h.pk,)) for h in hosts], expires_s=interval)
    return len(hosts)


@shared_task(acks_late=True)
def host_thumbnails(host_id: int) -> int:
    """One host's screenshots, run by that host's worker; how many were stored."""
    host = Host.objects.filter(pk=host_id, enabled=True).first()
    if host is None:
        return 0
    try:
        return thumbnails.thumbnails_refresh(host=host)
    except HypervisorError as exc:
        log.warning("thumbnails skipped host %s: %s", host.name, exc.message)
        return 0


@shared_task(acks_late=True)
def reap_console_sessions() -> int:
    """Close console sessions whose relay went away or whose SPICE file expired."""
    return console_services.console_sessions_reap()


@shared_task(acks_late=True)
def backups_round() -> dict[str, int]:
    """The beat's backup round: clean up after killed workers (backups failed, snapshot
    work queued again), expire the backups of desktops deleted long ago, then queue the
    scheduled backups that are due (each runs on its desktop's host queue), and each
    host's re-measure of its snapshots' space."""
    from vms.services.core.long_jobs import long_jobs_cleanup
    from vms.services.disks import backup_work, backups, snapshot_work

    failed = long_jobs_cleanup()  # every kind of long job (backups, restores, versions...)
    return {
        **{f"failed_{kind}": count for kind, count in failed.items()},
        "expired": backup_work.backups_expire_deleted(),
        "snapshots_resumed": snapshot_work.snapshots_resume(),
        "queued": backups.backups_round(),
        "snapshot_hosts": _on_each_host("vms.tasks.host_snapshots_measure", schedule="backups"),
    }


@shared_task(acks_late=True)
def host_snapshots_measure(host_id: int) -> int:
    """One host's re-measure of what its desktops' snapshots hold, run by that host's
    worker (qemu-img reads the volumes where they are); how many desktops were measured."""
    from vms.services.disks import snapshot_work

    host = Host.objects.filter(pk=host_id, enabled=True).first()
    return 0 if host is None else snapshot_work.snapshots_measure_host(host=host)


@shared_task(acks_late=True)
def template_version_build(version_id: int) -> None:
    """Flatten a prepared desktop's disk into a new base version of its template."""
    from vms.services.catalog import versions

    versions.template_version_build(version_id=version_id)


@shared_task(acks_late=True)
def metrics_sample_all_hosts() -> int:
    """The beat's round of monitoring samples: one task on each enabled host's queue, as
    for the heartbeat (a host whose worker is gone goes unmeasured, not mismeasured)."""
    return _on_each_host("vms.tasks.host_metrics_sample", schedule="metrics-sample")


@shared_task(acks_late=True)
def host_metrics_sample(host_id: int) -> int:
    """One host's monitoring sample, run by that host's worker; desktops measured."""
    host = Host.objects.filter(pk=host_id, enabled=True).first()
    if host is None:
        return 0
    try:
        return sampling.metrics_sample_host(host=host)
    except HypervisorError as exc:
        log.warning("metrics skipped host %s: %s", host.name, exc.message)
        return 0


@shared_task(acks_late=True)
def metrics_rollup() -> dict[str, int]:
    """Roll the monitoring history up (1-minute, 1-hour rows) and prune old rows."""
    return sampling.metrics_rollup()
