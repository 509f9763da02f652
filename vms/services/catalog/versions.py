"""Template versions: an admin saves a prepared (stopped) desktop as its template's new
base. The desktop's disk is flattened into a new base volume through the hypervisor
layer (a block pull, `vms.services.disks.copies`: measured and cancellable); new launches
use the newest version, existing desktops keep theirs until they are reset, and a base
still under any desktop is never deleted. Nothing half-made: a failed build removes its volume.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from vms.hypervisor import HypervisorError
from vms.models import (
    Desktop,
    DesktopStatus,
    Host,
    Template,
    TemplateVersion,
    TemplateVersionStatus,
)
from vms.roles import is_admin
from vms.services.catalog.templates import base_volume_name
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import InvalidTransition, ServiceError
from vms.services.core.locks import DesktopBusy, desktop_lock
from vms.services.core.long_jobs import LongJobKind, long_job_register
from vms.services.core.queue import enqueue_task
from vms.services.core.state_machine import StateMachine
from vms.services.desktops.actions import state_said
from vms.services.disks.copies import CopyCancelled, copy_names, disk_copy_discard, disk_copy_run
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)
V = TemplateVersionStatus
VERSION_TRANSITIONS: dict[str, frozenset[str]] = {
    V.BUILDING: frozenset({V.READY, V.FAILED, V.CANCELLED}),
    V.READY: frozenset({V.DELETED}),
    V.FAILED: frozenset(),
    V.CANCELLED: frozenset(),
    V.DELETED: frozenset(),
}
VERSION_STATES = StateMachine(
    model=TemplateVersion,
    states=V,
    table=VERSION_TRANSITIONS,
    what="A template version",
    terminal=frozenset({V.FAILED, V.CANCELLED, V.DELETED}),
)


def version_move(*, version_id: int, old: str, new: str, **fields: object) -> bool:
    """Compare-and-set one version's status through VERSION_TRANSITIONS."""
    return VERSION_STATES.compare_and_set(pk=version_id, old=old, new=new, **fields)


def _first_version(template: Template) -> None:
    """Version 1 is the imported image (made on the first publish)."""
    if not template.versions.exists():
        TemplateVersion.objects.create(
            template=template,
            number=1,
            base_image_path=template.base_image_path,
            status=V.READY,
            note="imported image",
        )


def template_version_publish(
    *,
    actor: User,
    desktop: Desktop,
    confirm_owner: str,
    note: str = "",
    source_ip: str | None = None,
) -> TemplateVersion:
    """Queue making a new version of `desktop`'s template from its disk (admin only; the
    desktop must be stopped, so its disk is consistent). Someone's desktop becomes the
    base of everyone's new desktops: the admin confirms by naming its owner
    (`confirm_owner`, their username), and the version and its audit row record the
    source desktop and its owner."""
    if not is_admin(actor):
        raise PermissionDenied("Only admins may publish template versions.")
    with transaction.atomic():
        template = Template.objects.select_for_update().get(pk=desktop.template_id)
        row = Desktop.objects.select_related("owner").get(pk=desktop.pk)
        owner = row.owner.get_username()
        if confirm_owner.strip() != owner:
            raise ServiceError(
                f"To publish {row.name}, confirm with the username of its owner, {owner}: "
                f"their disk becomes the base of every new {template.name} desktop, "
                "for everyone."
            )
        if row.status != DesktopStatus.STOPPED or row.host is None:
            raise InvalidTransition("Stop the desktop first: only a stopped disk is consistent.")
        if row.progress:  # a restore, a backup or a snapshot works on that disk now
            raise InvalidTransition(
                f"{row.name} is {state_said(row)}; publish it once that has finished."
            )
        if template.versions.filter(status=V.BUILDING).exists():
            raise InvalidTransition("A version of this template is already being built.")
        _first_version(template)
        number = (template.versions.aggregate(top=Max("number"))["top"] or 0) + 1
        version = TemplateVersion.objects.create(
            template=template,
            number=number,
            made_from=row,
            made_from_owner=row.owner,
            made_from_owner_name=owner,
            made_from_name=row.name,
            created_by=actor,
            note=note[:200],
        )
        audit_record(
            action=AuditVerb.TEMPLATE_VERSION_PUBLISH,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            template=template.name,
            version=number,
            source_desktop=str(row.pk),
            source_desktop_name=row.name,
            source_owner=owner,
        )
        enqueue_task("vms.tasks.template_version_build", version.pk, queue=row.host.long_queue_name)
    return version


def version_volume_name(version: TemplateVersion) -> str:
    """The new base's volume name: fixed per version, so a run cut off (a killed worker)
    and the run after it, or the clean-up, find the same volume."""
    return base_volume_name(
        template_name=f"{version.template.name}-v{version.number}", token=f"tv{version.pk}"
    )


def version_job_name(version: TemplateVersion) -> str:
    return copy_names(token=f"tv{version.pk}")[1]


def template_version_build(*, version_id: int) -> None:
    """The worker half: flatten (a block job with its progress on the row), then make the
    version the template's current base. A version cancelled meanwhile stops the copy and
    keeps nothing; a failure removes what was copied."""
    version = TemplateVersion.objects.select_related("template", "made_from__host").get(
        pk=version_id
    )
    desktop = version.made_from
    if version.status != V.BUILDING or desktop is None or desktop.host is None:
        return
    host = desktop.host
    rows = TemplateVersion.objects.filter(pk=version.pk)
    with desktop_lock(desktop.pk):  # nobody starts the desktop's disk while it is copied
        try:
            source = hypervisor_for(host).volume_info(
                pool=host.storage_pool, name=desktop.volume_name
            )
            if source is None:
                raise HypervisorError("the desktop's disk is gone", permanent=True)
            base = disk_copy_run(
                host=host,
                source_path=source.path,
                volume=version_volume_name(version),
                job=version_job_name(version),
                progress=lambda percent: rows.update(progress=percent),
                cancelled=lambda: not rows.filter(status=V.BUILDING).exists(),
            )
        except CopyCancelled:
            return  # its copy is removed; the cancel wrote its audit row
        except HypervisorError as exc:
            _version_failed(version, host, message=exc.message)
            return
        _version_ready(version, host, base.path)


def _version_ready(version: TemplateVersion, host: Host, path: str) -> None:
    with transaction.atomic():
        if not version_move(
            version_id=version.pk, old=V.BUILDING, new=V.READY, base_image_path=path, progress=100
        ):  # cancelled at the last moment
            hypervisor_for(host).delete_volume(
                pool=host.storage_pool, name=version_volume_name(version)
            )
            return
        Template.objects.filter(pk=version.template_id).update(base_image_path=path)
        audit_record(
            action=AuditVerb.TEMPLATE_VERSION_READY,
            template=version.template.name,
            version=version.number,
            base=path,
        )


def _version_failed(version: TemplateVersion, host: Host, *, message: str) -> None:
    disk_copy_discard(host=host, volume=version_volume_name(version), job=version_job_name(version))
    with transaction.atomic():
        version_move(version_id=version.pk, old=V.BUILDING, new=V.FAILED, last_error=message)
        audit_record(
            action=AuditVerb.TEMPLATE_VERSION_FAILED,
            template=version.template.name,
            version=version.number,
            message=message,
        )


def template_version_cancel(*, actor: User, version: TemplateVersion) -> None:
    """Cancel a version still being built: it never becomes current, and its copy is
    removed (by the build when it finishes, or here if the build never ran)."""
    if not is_admin(actor):
        raise PermissionDenied("Only admins may cancel template versions.")
    with transaction.atomic():
        if not version_move(version_id=version.pk, old=V.BUILDING, new=V.CANCELLED):
            raise InvalidTransition("That version is not being built.")
        audit_record(
            action=AuditVerb.TEMPLATE_VERSION_CANCEL,
            actor=actor,
            template=version.template.name,
            version=version.number,
        )


def versions_reconcile(*, stalled_after_s: float = 3600) -> int:
    """Versions whose build was cut off (a killed worker: still `building` long after,
    with the desktop's lock free) fail, and their partial copy is removed."""
    cutoff = timezone.now() - timedelta(seconds=stalled_after_s)
    failed = 0
    stalled = TemplateVersion.objects.filter(status=V.BUILDING, created_at__lt=cutoff)
    for version in stalled.select_related("template", "made_from__host"):
        desktop = version.made_from
        if desktop is None or desktop.host is None:
            continue
        try:
            with desktop_lock(desktop.pk, wait_s=0.5):
                _version_failed(version, desktop.host, message="interrupted (its worker stopped)")
                failed += 1
        except DesktopBusy:
            continue
    return failed


def _versions_building() -> list[TemplateVersion]:
    return list(TemplateVersion.objects.filter(status=V.BUILDING).select_related("template"))


# A build flattens into the new base's volume (named without the desktop prefix) with a
# helper domain (`vms.services.disks.copies`).
long_job_register(
    LongJobKind(
        name="template-version",
        model=TemplateVersion,
        cleanup=versions_reconcile,
        volumes=lambda: {version_volume_name(v) for v in _versions_building()},
        domains=lambda: {version_job_name(v) for v in _versions_building()},
    )
)


def base_in_use(*, path: str) -> bool:
    """Whether any desktop (not deleted) still rests on the base at `path`, or it is a
    template's current base."""
    norm = os.path.normpath(path)
    if Template.objects.filter(base_image_path=norm).exists():
        return True
    return (
        Desktop.objects.exclude(status=DesktopStatus.DELETED)
        .filter(Q(base_image_path=norm) | Q(base_image_path="", template__base_image_path=norm))
        .exists()
    )


def template_version_delete(*, actor: User, version: TemplateVersion) -> None:
    """Delete an old version's base volume; refused while any desktop still uses it."""
    if not is_admin(actor):
        raise PermissionDenied("Only admins may delete template versions.")
    if version.status != V.READY or base_in_use(path=version.base_image_path):
        raise InvalidTransition(
            "This version's base is still in use (the current version, or desktops built "
            "on it until they are reset); it is kept."
        )
    for host in {d.host for d in Desktop.objects.filter(template=version.template) if d.host}:
        hypervisor_for(host).delete_volume(
            pool=host.storage_pool, name=os.path.basename(version.base_image_path)
        )
    with transaction.atomic():
        version_move(version_id=version.pk, old=V.READY, new=V.DELETED)
        audit_record(
            action=AuditVerb.TEMPLATE_VERSION_DELETE,
            actor=actor,
            template=version.template.name,
            version=version.number,
        )
