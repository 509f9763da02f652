"""The portal's data, one module per domain; every model is importable from here
(`from vms.models import Desktop`), which is where Django finds them.

    fleet      Host, HostStatus
    networks   Network, NetworkMode
    catalog    Template, TemplateNetwork, TemplateVersion(Status), ConsoleType, the size limits
    desktops   Desktop, DesktopStatus, DesktopInterface, Quota
    audit      AuditEvent and the append-only base (AppendOnlyModel, AppendOnlyError)
    consoles   ConsoleSession, ConsoleMode
    disks      Snapshot, Backup, Restore and their states
    metrics    monitoring: latest values, history, alerts

Models hold data and simple derived values only. They never call libvirt; state changes
go through `vms.services` (docs/architecture.md). Each module imports the models it
refers to from their own modules, never from this package.
"""

from vms.models.audit import AppendOnlyError, AppendOnlyModel, AppendOnlyQuerySet, AuditEvent
from vms.models.catalog import (
    MAX_DISK_GIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    ConsoleType,
    Template,
    TemplateNetwork,
    TemplateVersion,
    TemplateVersionStatus,
)
from vms.models.consoles import (
    CONSOLE_CLOSE_FIELDS,
    ConsoleMode,
    ConsoleSession,
    ConsoleSessionQuerySet,
)
from vms.models.desktops import Desktop, DesktopInterface, DesktopStatus, Quota
from vms.models.disks import (
    Backup,
    BackupStatus,
    Restore,
    RestoreStatus,
    RestoreTarget,
    Snapshot,
    SnapshotStatus,
)
from vms.models.fleet import Host, HostStatus
from vms.models.metrics import (
    AlertKind,
    DesktopLoad,
    DesktopSample,
    HostSample,
    HostUsage,
    MetricAlert,
    Resolution,
)
from vms.models.networks import Network, NetworkMode

__all__ = [
    "CONSOLE_CLOSE_FIELDS",
    "MAX_DISK_GIB",
    "MAX_MEMORY_MIB",
    "MAX_VCPUS",
    "AlertKind",
    "AppendOnlyError",
    "AppendOnlyModel",
    "AppendOnlyQuerySet",
    "AuditEvent",
    "Backup",
    "BackupStatus",
    "ConsoleMode",
    "ConsoleSession",
    "ConsoleSessionQuerySet",
    "ConsoleType",
    "Desktop",
    "DesktopInterface",
    "DesktopLoad",
    "DesktopSample",
    "DesktopStatus",
    "Host",
    "HostSample",
    "HostStatus",
    "HostUsage",
    "MetricAlert",
    "Network",
    "NetworkMode",
    "Quota",
    "Resolution",
    "Restore",
    "RestoreStatus",
    "RestoreTarget",
    "Snapshot",
    "SnapshotStatus",
    "Template",
    "TemplateNetwork",
    "TemplateVersion",
    "TemplateVersionStatus",
]
