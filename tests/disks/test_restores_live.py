"""Restores and template-version builds as long operations (docs/backups.md): their
progress on the page's API, cancelling them, and a failed or cut-off one leaving the
desktop as it was. Real guests' disks, real block jobs on qemu:///system, the REST API.

The copies must last long enough to be watched and cancelled: the desktop is moved to a
second Host row on the same libvirtd ("slowcopy") whose own real Celery worker runs with
DISK_COPY_BANDWIDTH_MIB_S set (the production cap on restore I/O), so QEMU copies at a
known pace. The suite's worker (queue host.local) does everything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt
import pytest
import redis
from django.conf import settings

from tests.disks.test_backups_live import backed_up
from tests.disks.test_snapshots_live import (
    MARK,
    disk_path,
    has_pattern,
    launched_and_stopped,
    power,
    shell_of,
    wait_idle,
    write_pattern,
)
from tests.fixtures import running_worker, wait_for_status
from tests.servers import server_env
from vms.hypervisor import PowerState, qemuimg
from vms.models import Desktop, Host, Restore, TemplateVersion
from vms.services.catalog.versions import version_job_name, version_volume_name
from vms.services.disks.backup_work import backups_reconcile
from vms.services.disks.backups import backup_path, backup_restore

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = "160M"  # what the backup holds beyond the guest's own files
PACE = "24"  # MiB/s: a copy of the backup takes several seconds


@contextmanager
def slow_host(desktop: Desktop, local_host: Host) -> Iterator[Host]:
    """`desktop` moved to host 'slowcopy' (the same libvirtd and pool), served by a worker
    of its own whose copies run at PACE."""
    slow = Host.objects.create(
        name="slowcopy", uri=local_host.uri, storage_pool=local_host.storage_pool
    )
    Desktop.objects.filter(pk=desktop.pk).update(host=slow)
    name = f"slow{os.getpid()}@{socket.gethostname()}"
    queues = f"{slow.queue_name},{slow.long_queue_name}"
    with running_worker(queues=queues, name=name, DISK_COPY_BANDWIDTH_MIB_S=PACE):
        yield slow


def prepared(client, template, hypervisor):
    """A stopped desktop with DATA written, backed up (quiescent, compared), then changed."""
    desktop = launched_and_stopped(client, template)
    path = disk_path(desktop, hypervisor)
    write_pattern(path, MARK, 0x11, DATA)
    backup = backed_up(client, desktop)
    write_pattern(path, MARK, 0x22)  # the change a restore undoes
    return desktop, backup, path


def restores_of(client, desktop: Desktop) -> list[dict]:
    answer = client.get(f"/api/desktops/{desktop.pk}/restores/")
    assert answer.status_code == 200, answer.content
    return answer.json()


def watch_until_midway(client, desktop: Desktop, *, timeout: float = 60) -> dict:
    """The restore as the page sees it, once its copy is under way (0 < progress < 100)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = restores_of(client, desktop)
        if rows and rows[0]["status"] == "running" and 0 < rows[0]["progress"] < 100:
            return rows[0]
        assert not rows or rows[0]["status"] in ("queued", "running"), rows[0]
        time.sleep(0.1)
    raise AssertionError("the restore never showed its progress")


def wait_restore(restore_id, *, timeout: float = 120) -> Restore:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        restore = Restore.objects.get(pk=restore_id)
        if restore.status in ("done", "failed", "cancelled"):
            return restore
        time.sleep(0.2)
    raise AssertionError("the restore did not end")


def copy_gone(hypervisor, restore: Restore) -> bool:
    volume = hypervisor.volume_info(pool=settings.STORAGE_POOL_NAME, name=restore.volume_name)
    return volume is None and hypervisor.state(name=restore.job_name) is PowerState.missing


def in_place(client, backup) -> None:
    answer = client.post(
        f"/api/backups/{backup.pk}/restore/", {"target": "in_place"}, format="json"
    )
    assert answer.status_code == 202, answer.content


def test_in_place_restore_shows_progress_can_be_cancelled_then_completes(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    client = api_for(employee)
    desktop, backup, path = prepared(client, demo_template, hypervisor)
    with slow_host(desktop, local_host):
        in_place(client, backup)
        seen = watch_until_midway(client, desktop)
        later = watch_until_midway(client, desktop)
        assert later["progress"] >= seen["progress"]
        assert client.post(f"/api/restores/{seen['id']}/cancel/").status_code == 202
        cancelled = wait_restore(seen["id"])
        assert cancelled.status == "cancelled"
        kept = wait_idle(desktop.pk)
        assert kept.volume_name == desktop.volume_name and kept.status == "stopped"
        assert has_pattern(path, MARK, 0x22)  # its disk as it was
        assert copy_gone(hypervisor, cancelled)
        assert restores_of(client, desktop)[0]["status"] == "cancelled"
        again = client.post(f"/api/restores/{seen['id']}/cancel/")
        assert again.status_code == 409, again.content  # not under way any more

    Desktop.objects.filter(pk=desktop.pk).update(host=local_host)  # full speed from here
    in_place(client, backup)  # again, to its end
    done = wait_restore(restores_of(client, desktop)[0]["id"])
    assert done.status == "done" and done.progress == 100, done.last_error
    restored = wait_idle(desktop.pk)
    assert restored.volume_name == done.volume_name != desktop.volume_name
    assert hypervisor.volume_info(pool=local_host.storage_pool, name=desktop.volume_name) is None
    new_path = disk_path(restored, hypervisor)
    assert qemuimg.image_compare(str(backup_path(backup)), new_path)
    assert has_pattern(new_path, MARK, 0x11, DATA)
    assert hypervisor.state(name=done.job_name) is PowerState.missing
    power(client, restored, "start", "running")  # it boots from the restored disk


def test_failed_in_place_restore_keeps_the_disk(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    client = api_for(employee)
    desktop, backup, path = prepared(client, demo_template, hypervisor)
    with slow_host(desktop, local_host):
        in_place(client, backup)
        seen = watch_until_midway(client, desktop)
        restore = Restore.objects.get(pk=seen["id"])
        # The copy's QEMU dies under it (as when it crashes or is killed on the host).
        conn = libvirt.open(local_host.uri)
        try:
            conn.lookupByName(restore.job_name).destroy()
        finally:
            conn.close()
        failed = wait_restore(restore.pk)
        kept = wait_idle(desktop.pk)
    assert failed.status == "failed" and "copy" in failed.last_error
    assert kept.volume_name == desktop.volume_name and "kept its disk" in kept.last_error
    assert has_pattern(path, MARK, 0x22)
    assert copy_gone(hypervisor, failed)
    assert restores_of(client, desktop)[0]["last_error"] == failed.last_error


def test_cancelling_a_restore_to_a_new_desktop_deletes_it(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    client = api_for(employee)
    desktop, backup, _path = prepared(client, demo_template, hypervisor)
    with slow_host(desktop, local_host):
        Host.objects.filter(pk=local_host.pk).update(maintenance=True)  # placed on slowcopy
        answer = client.post(f"/api/backups/{backup.pk}/restore/", {"target": "new"}, format="json")
        assert answer.status_code == 202, answer.content
        new = Desktop.objects.get(pk=answer.json()["id"])
        seen = watch_until_midway(client, new)
        assert Desktop.objects.get(pk=new.pk).progress == "restoring"
        assert client.post(f"/api/restores/{seen['id']}/cancel/").status_code == 202
        cancelled = wait_restore(seen["id"])
        deadline = time.monotonic() + 60
        while Desktop.objects.get(pk=new.pk).status != "deleted":
            assert time.monotonic() < deadline, Desktop.objects.get(pk=new.pk).status
            time.sleep(0.2)
    assert cancelled.status == "cancelled"
    assert copy_gone(hypervisor, cancelled)  # the new desktop's disk: its volume
    assert hypervisor.state(name=new.domain_name) is PowerState.missing
    assert client.get(f"/api/desktops/{new.pk}/").status_code == 404


def restore_worker(desktop_id: str) -> subprocess.Popen[bytes]:
    """The restore's worker function in a process of its own, as a Celery worker runs it."""
    code = (
        "import django; django.setup(); "
        "from vms.services.disks.backup_work import desktop_restore; "
        f"desktop_restore(desktop_id={desktop_id!r})"
    )
    env = server_env(DISK_COPY_BANDWIDTH_MIB_S=PACE)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def test_restore_cut_off_by_a_killed_worker_is_cleaned_up(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    client = api_for(employee)
    desktop, backup, path = prepared(client, demo_template, hypervisor)
    # Its task goes to a queue nobody serves: the process below runs it instead.
    slow = Host.objects.create(
        name="nobody", uri=local_host.uri, storage_pool=local_host.storage_pool
    )
    Desktop.objects.filter(pk=desktop.pk).update(host=slow)
    backup_restore(actor=employee, backup=backup, target="in_place")
    redis.Redis.from_url(settings.REDIS_URL).delete(slow.long_queue_name)
    worker = restore_worker(str(desktop.pk))
    try:
        seen = watch_until_midway(client, desktop)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait()
    restore = Restore.objects.get(pk=seen["id"])
    assert restore.status == "running"  # cut mid-copy: its helper QEMU still runs
    assert hypervisor.state(name=restore.job_name) is PowerState.paused

    assert backups_reconcile() == 1
    restore.refresh_from_db()
    assert restore.status == "failed" and "interrupted" in restore.last_error
    assert copy_gone(hypervisor, restore)
    kept = Desktop.objects.get(pk=desktop.pk)
    assert kept.volume_name == desktop.volume_name and kept.progress == ""
    assert has_pattern(path, MARK, 0x22)


def test_template_version_build_shows_progress_and_cancel_removes_its_copy(
    celery_worker, api_for, employee, admin_user_, demo_template, hypervisor, local_host
) -> None:
    from vms.services.catalog.versions import template_version_cancel, template_version_publish

    desktop = launched_and_stopped(api_for(employee), demo_template)
    write_pattern(disk_path(desktop, hypervisor), MARK, 0x33, DATA)
    with slow_host(desktop, local_host):
        version = template_version_publish(
            actor=admin_user_,
            desktop=Desktop.objects.get(pk=desktop.pk),
            confirm_owner=employee.username,
        )
        deadline = time.monotonic() + 60
        while not 0 < TemplateVersion.objects.get(pk=version.pk).progress < 100:
            assert time.monotonic() < deadline, "the build never showed its progress"
            time.sleep(0.1)
        template_version_cancel(actor=admin_user_, version=version)
        deadline = time.monotonic() + 30
        while hypervisor.state(name=version_job_name(version)) is not PowerState.missing:
            assert time.monotonic() < deadline, "the copy still runs"
            time.sleep(0.2)
    version.refresh_from_db()
    assert version.status == "cancelled" and version.base_image_path == ""
    assert (
        hypervisor.volume_info(pool=local_host.storage_pool, name=version_volume_name(version))
        is None
    )
    demo_template.refresh_from_db()
    assert demo_template.versions.filter(status="ready").count() == 1  # v1 only: still current


def test_a_non_persistent_restored_desktop_starts_again_from_its_backup(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    client = api_for(employee)
    _desktop, backup, _path = prepared(client, demo_template, hypervisor)
    answer = client.post(f"/api/backups/{backup.pk}/restore/", {"target": "new"}, format="json")
    assert answer.status_code == 202, answer.content
    new = wait_for_status(answer.json()["id"], "running")
    with shell_of(new) as shell:
        shell.run("echo lost > /root/lost && sync")
    demo_template.persistent = False
    demo_template.save()
    stopped = power(client, new, "force-stop", "stopped")
    assert stopped.last_error == ""
    path = disk_path(stopped, hypervisor)
    # What the guest wrote is gone: the disk is the backup again, copied anew.
    assert qemuimg.image_compare(str(backup_path(backup)), path)
    assert has_pattern(path, MARK, 0x11, DATA)


def test_long_copies_do_not_hold_up_the_hosts_heartbeat(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    """A restore goes to the host's long queue: the host's own worker (one process here)
    stays free for its heartbeat while the copy runs."""
    from vms.tasks import heartbeat_all_hosts

    client = api_for(employee)
    desktop, backup, _path = prepared(client, demo_template, hypervisor)
    slow = Host.objects.create(
        name="slowcopy", uri=local_host.uri, storage_pool=local_host.storage_pool
    )
    Desktop.objects.filter(pk=desktop.pk).update(host=slow)
    tag = f"{os.getpid()}@{socket.gethostname()}"
    with (
        running_worker(queues=slow.queue_name, name=f"short{tag}", concurrency=1),
        running_worker(
            queues=slow.long_queue_name, name=f"long{tag}", DISK_COPY_BANDWIDTH_MIB_S=PACE
        ),
    ):
        in_place(client, backup)
        watch_until_midway(client, desktop)
        asked_at = time.monotonic()
        heartbeat_all_hosts()
        while Host.objects.get(pk=slow.pk).last_heartbeat_at is None:
            assert time.monotonic() - asked_at < 10, "the heartbeat waited behind the copy"
            time.sleep(0.1)
        row = restores_of(client, desktop)[0]
        assert row["status"] == "running"  # still copying
        assert client.post(f"/api/restores/{row['id']}/cancel/").status_code == 202
        assert wait_restore(row["id"]).status == "cancelled"


def test_deleting_a_desktop_during_its_restore_leaves_nothing(
    celery_worker, api_for, employee, demo_template, hypervisor, local_host
) -> None:
    """Delete is refused while the restore runs (issue 25: every other action answers 409).
    A desktop moved to `deleting` all the same, by a path outside the action table (here
    the service's own state move and teardown, standing in for one), stops the copy and
    nothing is swapped into it."""
    from vms.services.core.queue import enqueue_desktop_task
    from vms.services.desktops import transitions
    from vms.services.desktops.actions import ACTIONS

    client = api_for(employee)
    desktop, backup, _path = prepared(client, demo_template, hypervisor)
    with slow_host(desktop, local_host):
        in_place(client, backup)
        seen = watch_until_midway(client, desktop)
        refused = client.delete(f"/api/desktops/{desktop.pk}/")
        assert refused.status_code == 409 and "restore" in refused.json()["detail"]
        assert transitions.compare_and_set(desktop_id=desktop.pk, old="stopped", new="deleting")
        enqueue_desktop_task(ACTIONS["delete"], desktop=Desktop.objects.get(pk=desktop.pk))
        ended = wait_restore(seen["id"])
        wait_for_status(desktop.pk, "deleted")
    assert ended.status == "failed" and "deleted" in ended.last_error
    assert copy_gone(hypervisor, ended)
    assert hypervisor.state(name=desktop.domain_name) is PowerState.missing
    assert hypervisor.volume_info(pool=local_host.storage_pool, name=desktop.volume_name) is None
