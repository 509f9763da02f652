"""A backup interrupted by a killed worker leaves no half-written backup listed: the
worker function runs in a process of its own (as in a Celery worker), is SIGKILLed while
QEMU copies, and the reconcile pass (the beat's backups round) cleans up after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.disks.test_snapshots_live import disk_path, launched_and_stopped, write_pattern
from tests.servers import server_env
from vms.models import Backup
from vms.services.disks.backup_work import backups_reconcile
from vms.services.disks.backups import backup_folder, backups_listed

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_process(desktop_id: str) -> subprocess.Popen[bytes]:
    code = (
        "import django; django.setup(); "
        "from vms.services.disks.backup_work import desktop_backup; "
        f"desktop_backup(desktop_id={desktop_id!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=server_env())


def test_killed_worker_leaves_nothing_listed(
    celery_worker, api_for, employee, demo_template, hypervisor
) -> None:
    desktop = launched_and_stopped(api_for(employee), demo_template)
    write_pattern(disk_path(desktop, hypervisor), 0, 0x5A, "900M")  # enough to take a while
    backup = Backup.objects.create(desktop=desktop)
    worker = worker_process(str(desktop.pk))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = Backup.objects.get(pk=backup.pk)
            if row.status == "running" and any(backup_folder(desktop.pk).iterdir()):
                break
            assert worker.poll() is None, "the backup ended before it could be killed"
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait()
    assert Backup.objects.get(pk=backup.pk).status == "running"  # cut mid-copy

    assert backups_reconcile() == 1
    row = Backup.objects.get(pk=backup.pk)
    assert row.status == "failed" and "interrupted" in row.last_error
    assert list(backups_listed(desktop=desktop)) == []
    assert list(backup_folder(desktop.pk).iterdir()) == []  # no partial file left
    assert hypervisor.checkpoint_names(name=desktop.domain_name) == []
    assert hypervisor.state(name=desktop.domain_name) == "shutoff"  # the paused QEMU is gone
