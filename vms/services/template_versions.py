"""Template versions: an admin saves a prepared (stopped) desktop as its template's new
base. The desktop's disk is flattened into a new base volume through the hypervisor
layer (a block pull, `vms.services.disk_copies`: measured and cancellable); new launches
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
from vms.models import Desktop, DesktopStatus, Host, Template, TemplateVersion
from vms.roles import is_admin
from vms.services.audit import audit_record
from vms.services.disk_copies import CopyCancelled, copy_names, disk_copy_discard, disk_copy_run
from vms.services.errors import InvalidTransition
from vms.services.hosts import hypervisor_for
from vms.services.locks import DesktopBusy, desktop_lock
from vms.services.queue import enqueue_task
from vms.services.templates import base_volume_name

log = logging.getLogger(__name__)


def _first_version(template: Template) -> None:
    """Version 1 is the imported image (made on the first publish)."""
    if not template.versions.exists():
        TemplateVersion.objects.create(
            template=template,
            number=1,
            base_image_path=template.base_image_path,
            status="ready",
            note="imported image",
        )


def template_version_publish(*, actor: User, desktop: Desktop, note: str = "") -> TemplateVersion:
    """Queue making a new version of `desktop`'s template from its disk (admin only; the
    desktop must be stopped, so its disk is consistent)."""
    if not is_admin(actor):
        raise PermissionDenied("Only admins may publish template versions.")
    with transaction.atomic():
        template = Template.objects.select_for_update().get(pk=desktop.template_id)
        row = Desktop.objects.get(pk=desktop.pk)
        if row.status != DesktopStatus.STOPPED or row.host is None:
            raise InvalidTransition("Stop the desktop first: only a stopped disk is consistent.")
        if template.versions.filter(status="building").exists():
            raise InvalidTransition("A version of this template is already being built.")
        _first_version(template)
        number = (template.versions.aggregate(top=Max("number"))["top"] or 0) + 1
        version = TemplateVersion.objects.create(
            template=template, number=number, made_from=row, created_by=actor, note=note[:200]
        )
        audit_record(
            action="template.version_publish",
            actor=actor,
            desktop=row,
            template=template.name,
            version=number,
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
    if version.status != "building" or desktop is None or desktop.host is None:
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
                cancelled=lambda: not rows.filter(status="building").exists(),
            )
        except CopyCancelled:
            return  # its copy is removed; the cancel wrote its audit row
        except HypervisorError as exc:
            _version_failed(version, host, message=exc.message)
            return
        _version_ready(version, host, base.path)


def _version_ready(version: TemplateVersion, host: Host, path: str) -> None:
    with transaction.atomic():
        if not TemplateVersion.objects.filter(pk=version.pk, status="building").update(
            status="ready", base_image_path=path, progress=100
        ):  # cancelled at the last moment
            hypervisor_for(host).delete_volume(
                pool=host.storage_pool, name=version_volume_name(version)
            )
            return
        Template.objects.filter(pk=version.template_id).update(base_image_path=path)
        audit_record(
            action="template.version_ready",
            template=version.template.name,
            version=version.number,
            base=path,
        )


def _version_failed(version: TemplateVersion, host: Host, *, message: str) -> None:
    disk_copy_discard(host=host, volume=version_volume_name(version), job=version_job_name(version))
    with transaction.atomic():
        TemplateVersion.objects.filter(pk=version.pk, status="building").update(
            status="failed", last_error=message
        )
        audit_record(
            action="template.version_failed",
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
        if not TemplateVersion.objects.filter(pk=version.pk, status="building").update(
            status="cancelled"
        ):
            raise InvalidTransition("That version is not being built.")
        audit_record(
            action="template.version_cancel",
            actor=actor,
            template=version.template.name,
            version=version.number,
        )


def versions_reconcile(*, stalled_after_s: float = 3600) -> int:
    """Versions whose build was cut off (a killed worker: still `building` long after,
    with the desktop's lock free) fail, and their partial copy is removed."""
    cutoff = timezone.now() - timedelta(seconds=stalled_after_s)
    failed = 0
    stalled = TemplateVersion.objects.filter(status="building", created_at__lt=cutoff)
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
    if version.status != "ready" or base_in_use(path=version.base_image_path):
        raise InvalidTransition(
            "This version's base is still in use (the current version, or desktops built "
            "on it until they are reset); it is kept."
        )
    for host in {d.host for d in Desktop.objects.filter(template=version.template) if d.host}:
        hypervisor_for(host).delete_volume(
            pool=host.storage_pool, name=os.path.basename(version.base_image_path)
        )
    with transaction.atomic():
        TemplateVersion.objects.filter(pk=version.pk).update(status="deleted")
        audit_record(
            action="template.version_delete",
            actor=actor,
            template=version.template.name,
            version=version.number,
        )
