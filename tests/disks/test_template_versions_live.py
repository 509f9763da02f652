"""Template versions from a prepared desktop, on the real libvirtd with a real worker: the
admin prepares a desktop (a file in /root, through the guest's serial shell) and publishes
it stopped; its disk is flattened into a new base; new launches get its changes, existing
desktops keep their base until reset; a base in use is never deleted."""

from __future__ import annotations

import time

import pytest

from tests.disks.test_snapshots_live import launched, power, shell_of, wait_idle
from vms.hypervisor import qemuimg
from vms.models import Quota, Template, TemplateVersion
from vms.services.catalog.versions import template_version_delete, template_version_publish
from vms.services.core.errors import InvalidTransition

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def wait_version(version_id: int, *, timeout: float = 120) -> TemplateVersion:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = TemplateVersion.objects.get(pk=version_id)
        if version.status != "building":
            return version
        time.sleep(0.2)
    raise AssertionError("the version was not built")


def test_version_from_a_prepared_desktop_launches_with_its_changes(
    celery_worker, api_for, employee, admin_user_, demo_template, hypervisor
) -> None:
    Quota.objects.create(user=employee, max_desktops=3)
    client = api_for(employee)
    old_base = demo_template.base_image_path
    prepared = launched(client, demo_template)
    with shell_of(prepared) as shell:  # the admin prepares the desktop
        shell.run("echo office-suite-2 > /root/installed && sync")
    prepared = power(client, prepared, "stop", "stopped")
    bystander = launched(client, demo_template)

    version = wait_version(
        template_version_publish(
            actor=admin_user_, desktop=prepared, confirm_owner=employee.username
        ).pk
    )
    assert version.status == "ready", version.last_error
    assert version.number == 2
    template = Template.objects.get(pk=demo_template.pk)
    assert template.base_image_path == version.base_image_path != old_base
    assert qemuimg.image_chain(version.base_image_path)[0].get("backing-filename") is None
    qemuimg.image_check(version.base_image_path)

    new = launched(client, template)
    assert new.base_image_path == version.base_image_path
    with shell_of(new) as shell:  # launched with the version's changes
        assert shell.run("cat /root/installed") == "office-suite-2\n"

    # The bystander keeps the old base until it is reset, and the old base stays.
    v1 = TemplateVersion.objects.get(template=template, number=1)
    assert bystander.base_image_path == old_base
    with shell_of(bystander) as shell:
        assert "No such file" in shell.run("cat /root/installed 2>&1", check=False)
        shell.run("echo mine > /root/mine && sync")
    with pytest.raises(InvalidTransition):
        template_version_delete(actor=admin_user_, version=v1)
    # Reset (confirmed on the page): a fresh disk over the newest version, left stopped.
    assert client.post(f"/api/desktops/{bystander.pk}/reset/").status_code == 202
    reset = wait_idle(bystander.pk)
    assert reset.status == "stopped" and reset.base_image_path == version.base_image_path
    power(client, reset, "start", "running")
    with shell_of(reset) as shell:
        assert shell.run("cat /root/installed") == "office-suite-2\n"
        assert "No such file" in shell.run("cat /root/mine 2>&1", check=False)
    # The prepared desktop still rests on v1, so v1's base is still kept.
    with pytest.raises(InvalidTransition):
        template_version_delete(actor=admin_user_, version=v1)


def test_a_cancelled_or_cut_off_build_leaves_no_base(
    celery_worker, api_for, employee, admin_user_, demo_template, hypervisor
) -> None:
    from tests.disks.test_snapshots_live import launched_and_stopped
    from vms.services.catalog.versions import (
        template_version_build,
        template_version_cancel,
        version_volume_name,
        versions_reconcile,
    )

    desktop = launched_and_stopped(api_for(employee), demo_template)
    pool = desktop.host.storage_pool
    # Cancelled before its build ran: the build does nothing.
    first = TemplateVersion.objects.create(template=demo_template, number=2, made_from=desktop)
    template_version_cancel(actor=admin_user_, version=first)
    template_version_build(version_id=first.pk)
    assert hypervisor.volume_info(pool=pool, name=version_volume_name(first)) is None
    # Cut off mid-copy (a killed worker left a partial volume): the round fails it and
    # removes the copy; the template keeps its base.
    second = TemplateVersion.objects.create(template=demo_template, number=3, made_from=desktop)
    hypervisor.clone_volume(
        pool=pool,
        name=version_volume_name(second),
        base_path=demo_template.base_image_path,
        capacity_bytes=2**30,
    )
    TemplateVersion.objects.filter(pk=second.pk).update(
        created_at=second.created_at.replace(year=2020)
    )
    assert versions_reconcile() == 1
    assert TemplateVersion.objects.get(pk=second.pk).status == "failed"
    assert hypervisor.volume_info(pool=pool, name=version_volume_name(second)) is None
    assert (
        Template.objects.get(pk=demo_template.pk).base_image_path == demo_template.base_image_path
    )
