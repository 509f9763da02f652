"""The hypervisor layer: the only code in the portal that talks to a hypervisor library.

It does not import Django; callers pass URIs, pool names and prefixes in. Use::

    from vms.hypervisor import get_hypervisor, HypervisorError

    hv = get_hypervisor(host.uri)  # the backend registered for the URI's scheme
    hv.start(name="desk-42")

Importing this package (or its ``errors`` and ``types``) loads no hypervisor library: the
backends register with ``registry`` and are imported on the first ``get_hypervisor``. A
concrete backend is imported from its own module (``libvirt_backend.LibvirtHypervisor``).
"""

from __future__ import annotations

from .base import Hypervisor
from .errors import HypervisorError
from .naming import domain_name, is_ours, volume_name
from .registry import backend_for, get_hypervisor, register_backend, registered_schemes
from .types import (
    BackupJob,
    ConsoleEndpoint,
    CopyJob,
    DomainInfo,
    DomainSpec,
    DomainStats,
    GraphicsType,
    HostCapacity,
    HostLoad,
    InterfaceSpec,
    Lease,
    MigrationStats,
    NetworkSpec,
    PoolUsage,
    PowerState,
    SnapshotInfo,
    VirtType,
    VolumeInfo,
)

__all__ = [
    "BackupJob",
    "ConsoleEndpoint",
    "CopyJob",
    "DomainInfo",
    "DomainSpec",
    "DomainStats",
    "GraphicsType",
    "HostCapacity",
    "HostLoad",
    "Hypervisor",
    "HypervisorError",
    "InterfaceSpec",
    "Lease",
    "MigrationStats",
    "NetworkSpec",
    "PoolUsage",
    "PowerState",
    "SnapshotInfo",
    "VirtType",
    "VolumeInfo",
    "backend_for",
    "domain_name",
    "get_hypervisor",
    "is_ours",
    "register_backend",
    "registered_schemes",
    "volume_name",
]
