"""The registry of long-job kinds (vms.services.core.long_jobs): every kind is registered,
and reconcile keeps what each kind has under way while it removes a real orphan."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.db import models

from tests.fixtures import make_desktop
from vms.hypervisor import DomainSpec, GraphicsType
from vms.models import (
    Backup,
    BackupStatus,
    Desktop,
    DesktopStatus,
    Host,
    Restore,
    RestoreStatus,
    RestoreTarget,
    Template,
    TemplateVersion,
    TemplateVersionStatus,
)
from vms.services.core.long_jobs import long_job_domains, long_job_kinds, long_job_volumes
from vms.services.disks.copies import copy_names
from vms.services.fleet.reconcile import reconcile_host
from vms.settings_access import name_prefix

KINDS = {"backup", "restore", "template-version"}


def test_every_kind_is_registered() -> None:
    kinds = long_job_kinds()
    assert set(kinds) == KINDS
    # A row whose work reports a percent (`progress`, an integer) is a long job's row.
    with_percent = {
        model
        for model in apps.get_app_config("vms").get_models()
        if any(
            f.name == "progress" and isinstance(f, models.PositiveSmallIntegerField)
            for f in model._meta.concrete_fields
        )
    }
    assert with_percent == {kind.model for kind in kinds.values()}


def _desktop(owner: Any, template: Template, host: Host) -> Desktop:
    # stopped, with no guest: reconcile leaves its state alone
    return make_desktop(owner, template, status=DesktopStatus.STOPPED, host=host)


def _backup(owner: Any, template: Template, host: Host) -> Backup:
    desktop = _desktop(owner, template, host)
    return Backup.objects.create(desktop=desktop, created_by=owner, status=BackupStatus.RUNNING)


def _restore(owner: Any, template: Template, host: Host) -> Restore:
    backup = Backup.objects.create(
        desktop=_desktop(owner, template, host), created_by=owner, status=BackupStatus.READY
    )
    volume, job = copy_names(token=uuid.uuid4().hex[:12])
    return Restore.objects.create(
        backup=backup,
        desktop=_desktop(owner, template, host),
        target=RestoreTarget.IN_PLACE,
        status=RestoreStatus.RUNNING,
        volume_name=volume,
        job_name=job,
        created_by=owner,
    )


def _version(owner: Any, template: Template, host: Host) -> TemplateVersion:
    return TemplateVersion.objects.create(
        template=template,
        number=99,
        made_from=_desktop(owner, template, host),
        status=TemplateVersionStatus.BUILDING,
    )


JOBS: dict[str, Callable[[Any, Template, Host], models.Model]] = {
    "backup": _backup,
    "restore": _restore,
    "template-version": _version,
}


def test_every_kind_has_a_job_maker() -> None:
    assert set(JOBS) == set(long_job_kinds())


@pytest.mark.libvirt
@pytest.mark.django_db(transaction=True)
def test_reconcile_keeps_every_kinds_work_under_way(
    local_host, hypervisor, demo_template, employee
) -> None:
    for make in JOBS.values():
        make(employee, demo_template, local_host)
    prefix = name_prefix()
    volumes = {name for name in long_job_volumes() if name.startswith(prefix)}
    domains = long_job_domains()
    assert volumes and domains, "the jobs under way have volumes and helper domains"
    orphan = f"{prefix}orphan-{uuid.uuid4().hex[:6]}.qcow2"
    made: list[str] = []
    try:
        for name in sorted(volumes | {orphan}):
            hypervisor.clone_volume(
                pool=local_host.storage_pool,
                name=name,
                base_path=demo_template.base_image_path,
                capacity_bytes=1 << 30,
            )
            made.append(name)
        for name in sorted(domains):
            hypervisor.define_domain(
                DomainSpec(
                    name=name, vcpus=1, memory_mib=96, disk_path=demo_template.base_image_path,
                    graphics=GraphicsType.vnc, virt_type="qemu", title=name, description="",
                    desktop_id="", console_password="x",
                )
            )  # fmt: skip
        report = reconcile_host(host=local_host)
        assert report.removed_volumes == [orphan]  # reconcile did run, and removes orphans
        assert report.removed_domains == []
        left = set(hypervisor.list_volume_names(pool=local_host.storage_pool, prefix=name_prefix()))
        assert volumes <= left
        for name in domains:
            assert hypervisor.state(name=name) != "missing", name
    finally:
        for name in domains:
            hypervisor.undefine(name=name)
        for name in made:
            hypervisor.delete_volume(pool=local_host.storage_pool, name=name)
