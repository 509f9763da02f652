"""A desktop's disk in its host's pool: made when the desktop is provisioned, started
again or reset (an overlay over its base, or its restore's copy), and found when the
worker reads it. `vms.services.desktops.lifecycle.desktop_domain_prepare` asks here for
the disk, then builds the domain (`domain_spec`, pure) over it.
"""

from __future__ import annotations

from vms.hypervisor import HypervisorError
from vms.models import Desktop, Host
from vms.services.disks.restore_copy import restored_volume_path
from vms.services.fleet.hosts import hypervisor_for

GIB = 1024**3


def desktop_volume_ensure(desktop: Desktop, host: Host) -> str:
    """Make the desktop's disk on `host` if it is not there (an overlay over its base, or
    its restore's copy for a desktop made from a backup) and return its path."""
    if desktop.restored_from_id is not None:
        return restored_volume_path(desktop, host)
    volume = hypervisor_for(host).clone_volume(
        pool=host.storage_pool,
        name=desktop.volume_name,
        base_path=desktop.base_image_path or desktop.template.base_image_path,
        capacity_bytes=desktop.disk_gib * GIB,
    )
    return volume.path


def desktop_volume_renew(desktop: Desktop, host: Host) -> str:
    """Throw the desktop's disk away and make it afresh (a non-persistent desktop's
    changes are lost when it stops); the new disk's path."""
    hypervisor_for(host).delete_volume(pool=host.storage_pool, name=desktop.volume_name)
    return desktop_volume_ensure(desktop, host)


def desktop_volume_path(desktop: Desktop) -> str:
    """The path of the desktop's existing disk; a permanent error when it has no host or
    its disk is gone."""
    if desktop.host is None:
        raise HypervisorError("the desktop is on no host", permanent=True)
    info = hypervisor_for(desktop.host).volume_info(
        pool=desktop.host.storage_pool, name=desktop.volume_name
    )
    if info is None:
        raise HypervisorError("the desktop's disk is gone", permanent=True)
    return info.path
