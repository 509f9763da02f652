"""Worker-side desktop work: the libvirt half of the power actions (provision, start,
stop, reboot, delete), run by Celery tasks. The other actions' workers live with their
domain (`vms.services.disks`, `vms.services.fleet.migration`, `.recovery`); all of them
use the worker kit (`vms.services.desktops.worker`).

Every function here loads the desktop by id, does nothing unless the desktop is in the
state its action expects (so a task delivered twice does no harm), and writes state by
compare-and-set. A permanent HypervisorError ends in `error` with a message a person can
act on; a transient one propagates so the task retries.

Provisioning and booting may be cut at any point (a worker killed, libvirtd restarting)
and run again, or run twice at once (a message delivered twice, reconcile re-queueing a
slow task). Every step is idempotent: the volume and domain names are fixed per desktop,
clone and define return what exists, start accepts a running guest. The two paths that
create things also hold a per-desktop lock (`desktop_lock`) so that two runs never build
the same volume at the same moment; a run that finds the lock taken waits for it, then
sees from the state that the work is done. The worker kit's `desktop_worker` does the
locking, loading and state check of every worker function.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from vms.hypervisor import DomainSpec, Hypervisor
from vms.models import Desktop, DesktopStatus, Host
from vms.services.desktops.actions import ActionName
from vms.services.desktops.domain_spec import domain_spec
from vms.services.desktops.progress import LaunchStep as Step
from vms.services.desktops.worker import (
    desktop_advance,
    desktop_guarded,
    desktop_hypervisor,
    desktop_progress_set,
    desktop_resources_remove,
    desktop_worker,
)
from vms.services.disks.volumes import desktop_volume_ensure, desktop_volume_renew
from vms.services.fleet.hosts import host_virt_type
from vms.services.networks.desktop_networks import interfaces_prepare, interfaces_release
from vms.settings_access import shutdown_timeout_s

log = logging.getLogger(__name__)
S = DesktopStatus


def desktop_domain_prepare(desktop: Desktop, *, on: Host | None = None) -> DomainSpec:
    """Make the desktop's disk (`vms.services.disks.volumes`) and networks ready on its
    host (or on host `on`, which takes it over), and return its libvirt domain
    (`domain_spec`, pure)."""
    host = on or desktop.host
    assert host is not None
    disk_path = desktop_volume_ensure(desktop, host)
    virt_type = host_virt_type(host)
    interfaces = interfaces_prepare(desktop=desktop, host=host)
    return domain_spec(
        desktop, host=host, disk_path=disk_path, virt_type=virt_type, interfaces=interfaces
    )


@desktop_worker(when={S.PROVISIONING, S.STARTING})
def desktop_provision(desktop: Desktop) -> None:
    """Clone the disk, define the domain and boot it: provisioning -> starting -> running.

    A desktop already `starting` was provisioned by a run that was cut off before the
    guest ran (its message comes back after the worker died): this run boots it.
    """
    if desktop.status == S.PROVISIONING:
        desktop_guarded(desktop, lambda: _provision(desktop), cleanup=True)
    else:
        desktop_guarded(desktop, lambda: _boot_defined(desktop), cleanup=False)


def _provision(desktop: Desktop) -> None:
    from vms.services.disks.copies import CopyCancelled

    hypervisor = desktop_hypervisor(desktop)
    desktop_progress_set(desktop, Step.RESTORING if desktop.restored_from_id else Step.CLONING)
    try:
        spec = desktop_domain_prepare(desktop)
    except CopyCancelled:  # a restore to this new desktop was cancelled: it is deleted
        _remove_if_deleted(desktop, hypervisor)
        return
    desktop_progress_set(desktop, Step.DEFINING)
    info = hypervisor.define_domain(spec)
    Desktop.objects.filter(pk=desktop.pk).update(domain_uuid=info.uuid)
    if not desktop_advance(desktop, old=S.PROVISIONING, new=S.STARTING, progress=Step.STARTING):
        _remove_if_deleted(desktop, hypervisor)
        return
    _boot(desktop, hypervisor)


def _boot(desktop: Desktop, hypervisor: Hypervisor) -> None:
    hypervisor.start(name=desktop.domain_name)
    if desktop_advance(desktop, old=S.STARTING, new=S.RUNNING, progress=Step.READY, last_error=""):
        return
    # Force-stopped while it booted (the forced stop waits for this boot's lock): the
    # guest just started must not outlive that; power it off as the stop would.
    desktop.refresh_from_db(fields=["status"])
    if desktop.status == S.STOPPING:
        _power_off(desktop, force=True)


@desktop_worker(when={S.STARTING})
def desktop_boot(desktop: Desktop) -> None:
    """Power on: starting -> running (a non-persistent desktop was reset when it stopped)."""
    desktop_guarded(desktop, lambda: _boot_defined(desktop), cleanup=False)


def _boot_defined(desktop: Desktop) -> None:
    hypervisor = desktop_hypervisor(desktop)
    # A desktop that failed before its domain existed is rebuilt from scratch.
    info = hypervisor.define_domain(desktop_domain_prepare(desktop))
    Desktop.objects.filter(pk=desktop.pk).exclude(domain_uuid=info.uuid).update(
        domain_uuid=info.uuid
    )
    _boot(desktop, hypervisor)


def _forced(*, force: bool = False) -> bool:
    # A forced stop may come while the desktop boots: it waits for the boot to let go
    # (a graceful stop holds no lock, so a forced one can still cut into it).
    return force


@desktop_worker(when={S.STOPPING}, lock=_forced)
def desktop_power_off(desktop: Desktop, *, force: bool = False) -> None:
    """Shut the guest down (gracefully, then by force after the timeout): -> stopped."""
    desktop_guarded(desktop, lambda: _power_off(desktop, force=force), cleanup=False)


def _power_off(desktop: Desktop, *, force: bool) -> None:
    hypervisor = desktop_hypervisor(desktop)
    if force:
        hypervisor.destroy(name=desktop.domain_name)
    else:
        hypervisor.shutdown(name=desktop.domain_name, timeout_s=shutdown_timeout_s())
    if not desktop.template.persistent:
        # A non-persistent desktop's changes are thrown away: a fresh overlay over the base.
        assert desktop.host is not None
        desktop_volume_renew(desktop, desktop.host)
    desktop_advance(desktop, old=S.STOPPING, new=S.STOPPED, progress="")


@desktop_worker(when={S.RUNNING}, busy=ActionName.REBOOT, lock=False)
def desktop_restart(desktop: Desktop) -> None:
    """Reboot a running guest; the state stays `running`. The "reboot" progress note
    that `desktop_act` set (pages show "Rebooting…") is cleared once libvirt is done."""
    desktop_guarded(
        desktop,
        lambda: desktop_hypervisor(desktop).reboot(name=desktop.domain_name),
        cleanup=False,
    )


@desktop_worker(when={S.DELETING}, lock=False)
def desktop_teardown(desktop: Desktop) -> None:
    """Remove the domain and the volume: deleting -> deleted. Nothing is left behind."""
    desktop_guarded(desktop, lambda: _teardown(desktop), cleanup=False)


def _teardown(desktop: Desktop) -> None:
    desktop_resources_remove(desktop, desktop_hypervisor(desktop))
    if desktop_advance(
        desktop, old=S.DELETING, new=S.DELETED, deleted_at=timezone.now(), progress=""
    ):
        interfaces_release(desktop=desktop)


def _remove_if_deleted(desktop: Desktop, hypervisor: Hypervisor) -> None:
    """A delete overtook provisioning: take away what provisioning just made."""
    status = Desktop.objects.filter(pk=desktop.pk).values_list("status", flat=True).first()
    if status in (S.DELETING, S.DELETED, None):
        desktop_resources_remove(desktop, hypervisor)
