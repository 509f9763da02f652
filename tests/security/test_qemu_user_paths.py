"""The guests' QEMU runs as libvirt-qemu (scripts/setup.sh, scripts/lab-host): the backup
folders let that user reach the one file libvirt hands it (a push backup's target, a
restore's backing file), and still list nothing but to root.

Checked as the real user with setpriv, the way QEMU opens the file; a push backup into a
0700 folder failed on a lab host whose QEMU runs as libvirt-qemu (and worked with 0711).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vms.services.disks.backups import backup_folder

GUEST_USER = "libvirt-qemu"


def _as_guest_user(*command: str) -> int:
    return subprocess.run(
        ["setpriv", "--reuid", GUEST_USER, "--regid", GUEST_USER, "--clear-groups", *command],
        capture_output=True,
    ).returncode


@pytest.fixture
def backup_dir(settings: Any) -> Iterator[Path]:
    """A BACKUP_DIR beside the test pool (its parents are open to everyone, as
    /var/lib/desktop-portal is), removed at the end."""
    root = Path(settings.STORAGE_POOL_PATH).parent / f"test-backup-access-{uuid.uuid4().hex}"
    settings.BACKUP_DIR = str(root)
    yield root
    shutil.rmtree(root, ignore_errors=False)


def test_the_guests_user_reaches_its_backup_file_but_lists_no_folder(backup_dir: Path) -> None:
    guest = pwd.getpwnam(GUEST_USER)
    desktop = uuid.uuid4()
    (backup_dir / str(desktop)).mkdir(mode=0o700, parents=True)  # as an older portal made it
    backup_dir.chmod(0o700)

    folder = backup_folder(desktop)
    target = folder / "full.qcow2"
    target.touch(mode=0o600)
    os.chown(target, guest.pw_uid, guest.pw_gid)  # what libvirt does for the job's time

    assert _as_guest_user("sh", "-c", f": >> '{target}'") == 0  # QEMU opens it to write
    assert _as_guest_user("ls", str(folder)) != 0
    assert _as_guest_user("ls", str(backup_dir)) != 0
