"""Long disk copies on a host: restores and template versions (docs/backups.md).

One copy is a block job of the host's hypervisor (`Hypervisor.copy_start`) into a new
volume: followed into a percentage, stopped when its row says so, checked with
`qemu-img check` when it ends. Whatever goes wrong (a failure, a cancel, a transient
error) the half-filled volume and the job's helper are removed before the error goes on:
nothing half-made stays. A worker killed mid-copy leaves its row under way with the lock
free; the caller's reconcile then calls `disk_copy_discard` with the same names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings

from vms.hypervisor import Hypervisor, HypervisorError, VolumeInfo, qemuimg
from vms.hypervisor.naming import domain_name, volume_name
from vms.models import Host
from vms.services.fleet.hosts import hypervisor_for
from vms.settings_access import name_prefix

log = logging.getLogger(__name__)
POLL_S = 0.25


class CopyCancelled(Exception):
    """Someone cancelled the copy while it ran (its volume is already removed)."""


def copy_names(*, token: str) -> tuple[str, str]:
    """The copy's (volume, job) names for `token` (a row's id): fixed, so a run cut off,
    the run after it and the clean-up find the same ones; with the name prefix, so leftovers
    are the portal's (reconcile keeps those of copies under way)."""
    return volume_name(name_prefix(), f"copy-{token}"), domain_name(name_prefix(), f"copy-{token}")


def disk_copy_run(
    *,
    host: Host,
    source_path: str,
    volume: str,
    job: str,
    progress: Callable[[int], object],
    cancelled: Callable[[], bool],
) -> VolumeInfo:
    """Copy everything the qcow2 chain at `source_path` reads into new volume `volume` in
    `host`'s pool; `progress(percent)` is called as it goes, and `cancelled()` stops it."""
    hypervisor = hypervisor_for(host)
    try:
        info = hypervisor.copy_start(
            pool=host.storage_pool,
            name=volume,
            source_path=source_path,
            job=job,
            bandwidth_mib_s=settings.DISK_COPY_BANDWIDTH_MIB_S,
        )
        _follow(hypervisor, host, volume=volume, job=job, progress=progress, cancelled=cancelled)
        qemuimg.image_check(info.path)
    except BaseException:
        disk_copy_discard(host=host, volume=volume, job=job)
        raise
    return info


def _follow(
    hypervisor: Hypervisor,
    host: Host,
    *,
    volume: str,
    job: str,
    progress: Callable[[int], object],
    cancelled: Callable[[], bool],
) -> None:
    while True:
        state = hypervisor.copy_job(job=job, pool=host.storage_pool, name=volume)
        if not state.active:
            if not state.ok:
                raise HypervisorError(f"the disk copy failed: {state.error}", permanent=True)
            return
        if state.total_bytes:
            progress(min(int(100 * state.copied_bytes / state.total_bytes), 99))
        if cancelled():
            raise CopyCancelled("cancelled")
        time.sleep(POLL_S)


def disk_copy_discard(*, host: Host, volume: str, job: str) -> None:
    """Stop copy `job` and remove its volume; what cannot be reached now is logged (the
    next reconcile pass finds it again)."""
    hypervisor = hypervisor_for(host)
    try:
        hypervisor.copy_abort(job=job)
        hypervisor.delete_volume(pool=host.storage_pool, name=volume)
    except HypervisorError as exc:
        log.warning("clean-up of disk copy %s: %s", job, exc.message)
