"""Reconcile on the real libvirtd: the database follows what libvirt really has, orphans
with our prefix go, and nothing without our prefix is ever touched."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.fixtures import wait_for_status
from vms.hypervisor import DomainSpec, GraphicsType
from vms.models import Desktop, DesktopStatus
from vms.services.fleet.reconcile import reconcile_host
from vms.settings_access import name_prefix

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running_desktop(celery_worker, api_for, employee, demo_template) -> Desktop:
    response = api_for(employee).post(
        "/api/desktops/", {"template": demo_template.pk}, format="json"
    )
    return wait_for_status(response.json()["id"], "running")


def test_guest_killed_behind_the_portals_back_becomes_stopped(
    running_desktop, hypervisor, local_host
) -> None:
    hypervisor.destroy(name=running_desktop.domain_name)  # as `virsh destroy` would
    report = reconcile_host(host=local_host)
    running_desktop.refresh_from_db()
    assert running_desktop.status == DesktopStatus.STOPPED
    assert report.state_fixes == [f"{running_desktop.domain_name}: running -> stopped"]
    assert running_desktop.audit_events.filter(action="desktop.reconciled").exists()


def test_vanished_guest_becomes_error_with_a_message(
    running_desktop, hypervisor, local_host
) -> None:
    hypervisor.undefine(name=running_desktop.domain_name)
    reconcile_host(host=local_host)
    running_desktop.refresh_from_db()
    assert running_desktop.status == DesktopStatus.ERROR
    assert "disappeared" in running_desktop.last_error


def test_orphans_with_our_prefix_go_and_foreign_objects_stay(
    local_host, hypervisor, demo_template, settings
) -> None:
    pool = local_host.storage_pool
    orphan = f"{name_prefix()}orphan-{uuid.uuid4().hex[:6]}"
    foreign = f"notours-{uuid.uuid4().hex[:6]}"
    for name in (orphan, foreign):
        volume = hypervisor.clone_volume(
            pool=pool,
            name=f"{name}.qcow2",
            base_path=demo_template.base_image_path,
            capacity_bytes=1 << 30,
        )
        hypervisor.define_domain(
            DomainSpec(
                name=name,
                vcpus=1,
                memory_mib=96,
                disk_path=volume.path,
                graphics=GraphicsType.vnc,
                virt_type="qemu",
                title=name,
                description="",
                desktop_id="",
                console_password="x",
            )
        )
    try:
        report = reconcile_host(host=local_host)
        assert report.removed_domains == [orphan]
        assert report.removed_volumes == [f"{orphan}.qcow2"]
        assert hypervisor.state(name=orphan) == "missing"
        assert hypervisor.state(name=foreign) == "shutoff"
        assert [v.name for v in hypervisor.list_volumes(pool=pool, prefix="notours-")] == [
            f"{foreign}.qcow2"
        ]
    finally:
        hypervisor.undefine(name=foreign)
        hypervisor.delete_volume(pool=pool, name=f"{foreign}.qcow2")


def test_reconcile_requeues_a_desktop_whose_task_was_lost(
    celery_worker, employee, demo_template, local_host, hypervisor
) -> None:
    """A desktop stuck in provisioning (its message lost) is provisioned by reconcile."""
    from datetime import timedelta

    from django.utils import timezone

    from vms.hypervisor import domain_name, volume_name

    desktop = Desktop(
        owner=employee,
        template=demo_template,
        host=local_host,
        name="lost",
        vcpus=1,
        memory_mib=128,
        disk_gib=1,
    )
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    desktop.save()
    Desktop.objects.filter(pk=desktop.pk).update(
        status_changed_at=timezone.now() - timedelta(hours=1)
    )
    report = reconcile_host(host=local_host)
    assert report.requeued == [desktop.domain_name]
    wait_for_status(desktop.pk, "running")
    hypervisor.undefine(name=desktop.domain_name)
    hypervisor.delete_volume(pool=local_host.storage_pool, name=desktop.volume_name)


def test_import_template_command_refuses_bad_images(local_host, tmp_path, settings) -> None:
    from django.core.management import CommandError, call_command

    settings.IMAGE_IMPORT_DIRS = [str(tmp_path)]
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(CommandError, match="does not exist"):
        call_command("import_template", str(tmp_path / "missing.qcow2"), "--name", "x")
    with pytest.raises(CommandError, match="is not a qcow2 image"):
        call_command("import_template", str(raw), "--name", "x")
    with pytest.raises(CommandError, match="outside the folders"):
        call_command("import_template", "/etc/passwd", "--name", "x")
    with pytest.raises(CommandError, match="outside the folders"):
        call_command("import_template", str(tmp_path / ".." / "etc" / "x.qcow2"), "--name", "x")


def test_import_template_command_imports_a_qcow2(
    local_host, tmp_path, settings, hypervisor
) -> None:
    from django.core.management import call_command

    from vms.models import Template

    settings.IMAGE_IMPORT_DIRS = [str(tmp_path)]
    image = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    name = f"Tiny <&> {uuid.uuid4().hex[:4]}"
    call_command("import_template", str(image), "--name", name, "--memory-mib", "128")
    template = Template.objects.get(name=name)
    assert template.base_image_path.startswith(settings.STORAGE_POOL_PATH)
    volume_name = template.base_image_path.rsplit("/", 1)[1]
    try:
        assert [
            v.name
            for v in hypervisor.list_volumes(pool=local_host.storage_pool, prefix=volume_name)
        ] == [volume_name]
    finally:
        hypervisor.delete_volume(pool=local_host.storage_pool, name=volume_name)


def test_thumbnails_are_stored_by_the_worker_and_served_to_those_who_may_see(
    running_desktop, local_host, employee, other_employee
) -> None:
    from django.test import Client

    from vms.services.desktops.thumbnails import thumbnail_path, thumbnails_refresh

    assert thumbnails_refresh(host=local_host) == 1
    running_desktop.refresh_from_db()
    assert running_desktop.thumbnail_at is not None
    assert thumbnail_path(running_desktop.pk).read_bytes().startswith(b"\x89PNG")
    owner, stranger = Client(), Client()
    owner.force_login(employee)
    stranger.force_login(other_employee)
    url = f"/desktops/{running_desktop.pk}/thumbnail.png"
    response = owner.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    assert stranger.get(url).status_code == 404
    assert f'src="{url}?t='.encode() in owner.get("/").content
