"""The backups round removes only the portal's own orphans from BACKUP_DIR (issue 25, low
finding), with real files and links: a file named as the portal names backups
(`<id>.qcow2`, `.<id>.partial`), in a real desktop folder, whose backup is neither ready
nor under way, and not written for STRAY_GRACE_S. Foreign names, links (and what they
point to), other folders and recent files stay."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import make_desktop
from vms.models import Backup
from vms.services.disks.backup_work import STRAY_GRACE_S, backup_strays_remove, backups_reconcile
from vms.services.disks.backups import backup_folder, backup_root

pytestmark = pytest.mark.django_db(transaction=True)


def _file(path: Path, *, age_s: float) -> Path:
    path.write_bytes(b"qcow2 or not")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_only_old_orphans_named_by_the_portal_go(
    employee: Any, fake_template: Any, tmp_path: Path
) -> None:
    old = STRAY_GRACE_S + 60
    desktop = make_desktop(employee, fake_template, status="stopped")
    folder = backup_folder(desktop.pk)
    ready = Backup.objects.create(desktop=desktop, status="ready", file_name="")
    Backup.objects.filter(pk=ready.pk).update(file_name=f"{ready.pk}.qcow2")
    expired = Backup.objects.create(desktop=desktop, status="expired")
    queued = Backup.objects.create(desktop=desktop, status="queued")
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = _file(outside / f"{uuid.uuid4()}.qcow2", age_s=old)

    keep = [
        _file(folder / f"{ready.pk}.qcow2", age_s=old),  # a ready backup's own file
        _file(folder / f".{queued.pk}.partial", age_s=old),  # in flight
        _file(folder / f".{uuid.uuid4()}.partial", age_s=10),  # just started: the grace
        _file(folder / f"{uuid.uuid4()}.qcow2", age_s=10),  # just renamed
        _file(folder / "notes.txt", age_s=old),  # not the portal's name
        _file(folder / f"{str(uuid.uuid4()).upper()}.qcow2", age_s=old),  # nor this
    ]
    other = backup_root() / "lost+found"  # not a desktop's folder
    other.mkdir()
    keep.append(_file(other / f"{uuid.uuid4()}.qcow2", age_s=old))
    link = folder / f"{uuid.uuid4()}.qcow2"  # a link with the portal's name: not followed
    link.symlink_to(precious)
    linked_folder = backup_root() / str(uuid.uuid4())  # a linked "desktop folder"
    linked_folder.symlink_to(outside, target_is_directory=True)
    go = [
        _file(folder / f"{expired.pk}.qcow2", age_s=old),
        _file(folder / f".{expired.pk}.partial", age_s=old),
        _file(folder / f"{uuid.uuid4()}.qcow2", age_s=old),
        _file(folder / f".{uuid.uuid4()}.partial", age_s=old),
    ]
    try:
        assert sorted(backup_strays_remove()) == sorted(go)
        assert backups_reconcile() == 0  # the round's own call: nothing more goes
        for path in keep:
            assert path.is_file(), path
        assert link.is_symlink() and precious.read_bytes() == b"qcow2 or not"
        assert linked_folder.is_symlink()
        assert not any(path.exists() for path in go)
    finally:
        link.unlink(missing_ok=True)
        linked_folder.unlink(missing_ok=True)
        for path in other.iterdir():
            path.unlink()
        other.rmdir()
