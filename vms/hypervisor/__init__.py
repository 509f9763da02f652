"""The hypervisor layer: the only code in the portal that talks to libvirt.

It does not import Django; callers pass URIs, pool names and prefixes in. Use::

    from vms.hypervisor import get_hypervisor, HypervisorError

    hv = get_hypervisor(settings.LIBVIRT_URI)
    hv.start(name="desk-42")
"""

from __future__ import annotations

import threading

from .base import Hypervisor
from .errors import HypervisorError
from .libvirt_backend import LibvirtHypervisor
from .naming import domain_name, is_ours, volume_name
from .types import (
    ConsoleEndpoint,
    DomainInfo,
    DomainSpec,
    GraphicsType,
    PowerState,
    VirtType,
    VolumeInfo,
)

__all__ = [
    "ConsoleEndpoint",
    "DomainInfo",
    "DomainSpec",
    "GraphicsType",
    "Hypervisor",
    "HypervisorError",
    "LibvirtHypervisor",
    "PowerState",
    "VirtType",
    "VolumeInfo",
    "domain_name",
    "get_hypervisor",
    "is_ours",
    "volume_name",
]

_instances: dict[str, Hypervisor] = {}
_instances_lock = threading.Lock()


def get_hypervisor(uri: str) -> Hypervisor:
    """The (process-wide, cached) hypervisor for a libvirt URI.

    Cheap to call: the connection is opened on first use and reopened after ``fork()`` or a
    libvirtd restart, so the returned object can be kept across Celery tasks.
    """
    with _instances_lock:
        hv = _instances.get(uri)
        if hv is None:
            hv = LibvirtHypervisor(uri)
            _instances[uri] = hv
        return hv
