"""Disk leases: whether a QEMU somewhere may still write to a desktop's disk.

Every host runs libvirt's `lockd` lock manager with its lockspace on the shared storage
(`file_lockspace_dir` in qemu-lockd.conf; docs/fleet.md). For each disk a running guest
has open, the host's `virtlockd` holds a POSIX write lock on the file named by the SHA-256
of the disk's path in that directory, for as long as the QEMU runs; the lock goes only
when that QEMU ends or that host's `virtlockd` (with its kernel) is gone. The portal's
workers see the same directory at `DISK_LOCKSPACE_DIR` and ask the kernel (F_GETLK, which
NFS carries to the server) whether anyone holds such a lock: reading only, they never take
one, so they never stand in a starting guest's way.

- `disk_lease_state` answers for one disk. Recovery deletes or starts nothing unless the
  lease is `LOST`: its file is there (so a lock manager did lease the disk) and nobody
  locks it any more (so that lock manager, or the QEMU, is gone). virtlockd removes the
  file when a guest stops cleanly; a daemon that dies leaves it behind, unlocked.
- `host_disk_lock_verdict` is the heartbeat's check that a host's lock manager really
  works: the lockspace is there, and every desktop running on the host holds its lease. A
  host without that proof takes no part in recovery (vms.services.fleet.recovery).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# struct flock on Linux x86-64: l_type, l_whence (short), l_start, l_len (off_t), l_pid.
_FLOCK = "hhqqi"


class LeaseState(enum.Enum):
    # A QEMU may still write: nothing may open or delete the disk.
    HELD = "held"
    # The lease file is there and nobody locks it: it was held, and its holder (the QEMU,
    # or the whole lock daemon of a host that died) is gone. The one proof recovery takes.
    LOST = "lost"
    # No lease file: the disk was never leased (a host without the lock manager), or its
    # guest stopped cleanly. Proves nothing about a QEMU that may run unleased.
    ABSENT = "absent"
    # The lockspace cannot be read here.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LeaseAnswer:
    state: LeaseState
    reason: str = ""


def lockspace_dir() -> Path | None:
    """The shared lockspace as this worker sees it (None when not configured)."""
    configured = str(settings.DISK_LOCKSPACE_DIR).strip()
    return Path(configured) if configured else None


def desktop_disk_path(volume_name: str) -> str:
    """The path QEMU opens for a desktop's volume: the shared pool directory (the same
    path on every host) and the volume's name, as libvirt writes it (normalized)."""
    return os.path.normpath(os.path.join(str(settings.STORAGE_POOL_PATH), volume_name))


def lease_file(disk_path: str) -> Path | None:
    """The lockspace file virtlockd locks for `disk_path` (libvirt's lockd: the SHA-256
    of the path, in hex)."""
    space = lockspace_dir()
    if space is None:
        return None
    return space / hashlib.sha256(disk_path.encode()).hexdigest()


def disk_lease_state(*, disk_path: str) -> LeaseAnswer:
    """Whether some host's lock manager holds `disk_path`'s lease (see LeaseState)."""
    space = lockspace_dir()
    if space is None:
        return LeaseAnswer(LeaseState.UNKNOWN, "DISK_LOCKSPACE_DIR is not set")
    if not space.is_dir():
        return LeaseAnswer(LeaseState.UNKNOWN, f"the lockspace {space} is not there")
    path = lease_file(disk_path)
    assert path is not None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return LeaseAnswer(LeaseState.ABSENT, f"no lease was ever taken on {disk_path} here")
    except OSError as exc:
        return LeaseAnswer(LeaseState.UNKNOWN, f"the lease {path.name} cannot be read: {exc}")
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        found = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    except OSError as exc:
        return LeaseAnswer(LeaseState.UNKNOWN, f"the lease {path.name} cannot be tested: {exc}")
    finally:
        os.close(fd)
    if found[0] == fcntl.F_UNLCK:
        return LeaseAnswer(LeaseState.LOST)
    return LeaseAnswer(LeaseState.HELD, f"held by process {found[4]} of a lock manager")


def host_disk_lock_verdict(*, running_disks: dict[str, str]) -> tuple[bool, str]:
    """Whether a host's disk lock manager provably works, and why (for the admin's host
    page): the lockspace is readable here, and each of the host's running desktops
    (`running_disks`: desktop name -> disk path) holds its lease there."""
    space = lockspace_dir()
    if space is None:
        return False, "DISK_LOCKSPACE_DIR is not set: no disk lease can be checked."
    if not space.is_dir():
        return False, f"The disk lockspace {space} is not there (or not mounted) on this worker."
    unleased = [
        name
        for name, path in sorted(running_disks.items())
        if disk_lease_state(disk_path=path).state is not LeaseState.HELD
    ]
    if unleased:
        return False, (
            f"Running without a disk lease in {space}: {', '.join(unleased[:5])}. The host's "
            'libvirt needs lock_manager = "lockd" and this file_lockspace_dir (docs/fleet.md).'
        )
    if not running_disks:
        return True, f"Lockspace {space} readable; no running desktop to check yet."
    return True, f"Every running desktop ({len(running_disks)}) holds its lease in {space}."
