"""Reconcile: bring the database in line with what libvirt really has on each host.

- A desktop marked running whose guest stopped becomes `stopped`; one whose guest vanished
  becomes `error` with a message. A stopped desktop whose guest runs becomes `running`.
- Domains and volumes that carry our name prefix but belong to no live desktop are
  removed. Anything without the prefix is never touched, nor is any template's base.
- Desktops stuck in a transitional state (their task was lost) get their task again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from vms.hypervisor import DomainInfo, Hypervisor, PowerState, VolumeInfo
from vms.models import Desktop, DesktopStatus, Host, Template, TemplateVersion
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.long_jobs import long_job_domains, long_job_volumes
from vms.services.core.queue import enqueue_desktop_task
from vms.services.desktops import transitions
from vms.services.desktops.actions import action_resuming
from vms.services.desktops.events import push_desktop_changed
from vms.services.fleet.hosts import hypervisor_for
from vms.services.networks.desktop_networks import networks_reconcile
from vms.settings_access import name_prefix

log = logging.getLogger(__name__)
S = DesktopStatus
# A transitional state older than this means the task that should end it was lost.
STALL_AFTER = timedelta(minutes=3)


@dataclass
class ReconcileReport:
    """What one reconcile pass changed on one host."""

    state_fixes: list[str] = field(default_factory=list)
    removed_domains: list[str] = field(default_factory=list)
    removed_volumes: list[str] = field(default_factory=list)
    removed_networks: list[str] = field(default_factory=list)
    network_errors: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)


def reconcile_host(*, host: Host, volumes_live: Set[str] = frozenset()) -> ReconcileReport:
    """One pass over one host. Raises HypervisorError when libvirt cannot be reached.

    `volumes_live`: live desktops' volume names read once for a pass over every host (a
    shared pool lists every desktop's disk on every host); a volume that is not among them
    is looked up again after this host's listing, so a disk made since is never taken
    for an orphan.
    """
    hypervisor = hypervisor_for(host)
    report = ReconcileReport()
    domains = {d.name: d for d in hypervisor.list_domains(prefix=name_prefix())}
    volume_names = hypervisor.list_volume_names(pool=host.storage_pool, prefix=name_prefix())
    live = {d.domain_name: d for d in Desktop.objects.filter(host=host).exclude(status=S.DELETED)}
    for desktop in live.values():
        _fix_state(desktop, domains.get(desktop.domain_name), report)
    # Only what this host's own desktops do not explain is looked up in the rest of the
    # fleet: reading every desktop's names for every host made a pass over all hosts grow
    # with hosts x desktops (docs/scale.md).
    strangers = domains.keys() - live.keys()
    owned = domains_owned_by(host=host, names=strangers)
    _remove_orphan_domains(hypervisor, {n: domains[n] for n in strangers}, owned, report)
    mine = {d.volume_name for d in live.values()}
    unknown = {name for name in volume_names if name not in mine and name not in volumes_live}
    in_use = volumes_in_use(names=unknown)
    suspects = unknown - in_use
    if suspects:  # orphans, maybe: only they are described (their paths)
        volumes = hypervisor.list_volumes(pool=host.storage_pool, prefix=name_prefix())
        orphans = [volume for volume in volumes if volume.name in suspects]
        _remove_orphan_volumes(hypervisor, host, orphans, in_use, report)
    _requeue_stalled(live.values(), report)
    # Networks last, and on their own: one that cannot be repaired does not hold up the rest.
    report.removed_networks, report.network_errors = networks_reconcile(host=host)
    return report


def domains_owned_by(*, host: Host, names: Collection[str] | None = None) -> set[str]:
    """Domain names that belong on `host`'s libvirt: its desktops', those of another Host
    row naming the same libvirt, and those migrating to it (the incoming guest is defined
    there before the database moves the desktop). Only among `names` when given."""
    if names is not None and not names:
        return set()
    here = Q(host__uri=host.uri) | Q(migrate_to__uri=host.uri)
    rows = Desktop.objects.filter(here).exclude(status=S.DELETED)
    if names is not None:
        rows = rows.filter(domain_name__in=names)
    return set(rows.values_list("domain_name", flat=True)) | copy_jobs_under_way()


def volumes_in_use(*, names: Collection[str] | None = None) -> set[str]:
    """Every live desktop's volume name, whatever its host: the pool directory is shared
    between hosts (as NFS would be), so each host lists the others' disks too. Only among
    `names` when given."""
    if names is not None and not names:
        return set()
    rows = Desktop.objects.exclude(status=S.DELETED)
    if names is not None:
        rows = rows.filter(volume_name__in=names)
    # and the volumes long jobs are writing (restores' copies...: the long-job registry)
    return set(rows.values_list("volume_name", flat=True)) | long_job_volumes()


def copy_jobs_under_way() -> set[str]:
    """The helper domains of long jobs under way (the long-job registry: restores,
    template versions...): they carry the prefix but belong to no desktop. One cut off by
    a killed worker is removed by the beat's clean-up of its kind, which fails its row."""
    return long_job_domains()


def _fix_state(desktop: Desktop, domain: DomainInfo | None, report: ReconcileReport) -> None:
    state = domain.state if domain is not None else PowerState.missing
    if desktop.status == S.RUNNING and state == PowerState.missing:
        message = (
            "The desktop's virtual machine disappeared from its host. "
            "Delete it and launch a new one."
        )
        _correct(desktop, new=S.ERROR, report=report, last_error=message)
    elif desktop.status == S.RUNNING and state in (PowerState.shutoff, PowerState.crashed):
        _correct(desktop, new=S.STOPPED, report=report, progress="")
    elif desktop.status in (S.STOPPED, S.ERROR) and state == PowerState.running:
        _correct(desktop, new=S.RUNNING, report=report, last_error="")


def _correct(desktop: Desktop, *, new: str, report: ReconcileReport, **fields: object) -> None:
    old = desktop.status
    with transaction.atomic():
        if not transitions.compare_and_set(desktop_id=desktop.pk, old=old, new=new, **fields):
            return
        audit_record(action=AuditVerb.DESKTOP_RECONCILED, desktop=desktop, old=old, new=new)
        push_desktop_changed(desktop_id=desktop.pk)
    report.state_fixes.append(f"{desktop.domain_name}: {old} -> {new}")


def _remove_orphan_domains(
    hypervisor: Hypervisor,
    domains: dict[str, DomainInfo],
    owned: set[str],
    report: ReconcileReport,
) -> None:
    for name in domains.keys() - owned:
        log.info("reconcile removes orphan domain %s", name)
        hypervisor.undefine(name=name)
        report.removed_domains.append(name)


def _remove_orphan_volumes(
    hypervisor: Hypervisor,
    host: Host,
    volumes: list[VolumeInfo],
    wanted: set[str],
    report: ReconcileReport,
) -> None:
    if all(volume.name in wanted for volume in volumes):
        return  # nothing to remove: no need to read the templates' bases
    # Template bases are named without the prefix, but a short prefix ("b", "base-")
    # would still match them: a base is never an orphan while its template exists.
    bases = {
        os.path.normpath(p) for p in Template.objects.values_list("base_image_path", flat=True)
    }
    # Older template versions stay while desktops rest on them (services.template_versions).
    bases |= {
        os.path.normpath(p)
        for p in TemplateVersion.objects.exclude(base_image_path="").values_list(
            "base_image_path", flat=True
        )
    }
    for volume in volumes:
        if volume.name not in wanted and os.path.normpath(volume.path) not in bases:
            log.info("reconcile removes orphan volume %s", volume.name)
            hypervisor.delete_volume(pool=host.storage_pool, name=volume.name)
            report.removed_volumes.append(volume.name)


def _requeue_stalled(desktops: Iterable[Desktop], report: ReconcileReport) -> None:
    cutoff = timezone.now() - STALL_AFTER
    for desktop in desktops:
        action = action_resuming(desktop.status)
        if action and desktop.status_changed_at < cutoff:
            enqueue_desktop_task(action, desktop=desktop)
            report.requeued.append(desktop.domain_name)
