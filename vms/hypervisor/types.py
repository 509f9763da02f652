"""Plain data the hypervisor layer takes and returns (no libvirt objects leak out)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "BackupJob",
    "ConsoleEndpoint",
    "DomainInfo",
    "DomainSpec",
    "DomainStats",
    "GraphicsType",
    "HostCapacity",
    "InterfaceSpec",
    "Lease",
    "NetworkSpec",
    "PoolUsage",
    "PowerState",
    "SnapshotInfo",
    "VirtType",
    "VolumeInfo",
]

VirtType = Literal["kvm", "qemu"]


class PowerState(StrEnum):
    """What a domain is doing, reduced to what the portal cares about."""

    running = "running"
    paused = "paused"
    shutoff = "shutoff"
    crashed = "crashed"
    missing = "missing"  # no domain of that name is defined
    other = "other"  # nostate, pmsuspended, ...


class GraphicsType(StrEnum):
    """Remote display protocol QEMU serves for a desktop."""

    vnc = "vnc"
    spice = "spice"


@dataclass(frozen=True, slots=True)
class InterfaceSpec:
    """One virtio NIC of a desktop on a libvirt network.

    ``filter`` is the nwfilter the NIC is bound to (the network's guard, which takes in
    clean-traffic), with ``ip`` as its IP parameter when the portal assigned the address;
    ``isolated`` sets ``<port isolated='yes'/>``; ``bandwidth_kb_s`` limits each direction.
    """

    network: str
    mac: str
    filter: str | None = None
    ip: str | None = None
    isolated: bool = False
    bandwidth_kb_s: int | None = None


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A libvirt network and its guard nwfilter on one host.

    ``mode`` is ``nat``, ``isolated`` or ``bridge``. NAT and isolated networks have a
    ``gateway`` address with ``prefix_length``, a DHCP range and fixed DHCP ``hosts``
    (MAC, address); a bridged one joins ``bridge``. ``subnet`` is the desktops' own
    subnet (a bridged network's too, when the portal assigns its addresses).

    The guard lets a desktop reach DHCP, DNS and ``gateway_ports`` (TCP) on the gateway,
    and drops every other packet to the gateway and to ``blocked_addresses`` (addresses or
    CIDR blocks of the management plane: every host, Redis, the database, the proxies,
    link-local). Then its own subnet passes (or, with ``isolate_desktops`` on a NAT or
    isolated network, is dropped), ``allowed_ranges`` pass, ``denied_ranges`` are dropped,
    and the rest passes (docs/networks.md).
    """

    name: str
    filter_name: str
    mode: str
    gateway: str | None = None
    prefix_length: int | None = None
    dhcp_start: str | None = None
    dhcp_end: str | None = None
    hosts: tuple[tuple[str, str], ...] = ()
    bridge: str | None = None
    gateway_ports: tuple[int, ...] = ()
    blocked_addresses: tuple[str, ...] = ()
    subnet: str | None = None
    isolate_desktops: bool = False
    allowed_ranges: tuple[str, ...] = ()
    denied_ranges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """A DHCP lease of a network: which MAC holds which address."""

    mac: str
    ip: str


@dataclass(frozen=True, slots=True)
class DomainSpec:
    """Everything needed to define one desktop's domain.

    ``console_password`` is the password set in the persistent definition; per-session
    passwords are set later with ``set_console_password``. VNC authentication only uses the
    first 8 characters of a password (a limit of the RFB protocol's DES scheme).
    """

    name: str
    vcpus: int
    memory_mib: int
    disk_path: str
    graphics: GraphicsType
    virt_type: VirtType
    title: str
    description: str
    desktop_id: str
    console_password: str = field(repr=False)
    console_password_valid_to: dt.datetime | None = None
    listen_address: str = "127.0.0.1"
    disk_format: str = "qcow2"
    interfaces: tuple[InterfaceSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """A defined domain as libvirt reports it."""

    name: str
    uuid: str
    state: PowerState
    desktop_id: str | None


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A storage volume; ``backing_path`` is set for linked clones (qcow2 overlays)."""

    name: str
    path: str
    capacity_bytes: int
    allocation_bytes: int
    backing_path: str | None
    format: str | None = None


@dataclass(frozen=True, slots=True)
class ConsoleEndpoint:
    """Where the guest's display really listens, as read from the live domain."""

    type: GraphicsType
    host: str
    port: int
    tls_port: int | None


@dataclass(frozen=True, slots=True)
class HostCapacity:
    """What a host has for desktops, as its hypervisor reports it.

    ``pool_gib`` is the size of the named storage pool's file system, ``None`` when the host
    has no such pool yet (it is created on the first heartbeat).
    """

    cpus: int
    memory_mib: int
    pool_gib: int | None


@dataclass(frozen=True, slots=True)
class HostLoad:
    """What a host uses right now, as its hypervisor reports it (the heartbeat's sample).

    ``cpu_busy_ns`` and ``cpu_total_ns`` are the node's cumulative CPU counters (all CPUs);
    a CPU use in percent is their change between two samples, never one sample alone.
    ``available_memory_mib`` counts free memory plus the page cache the kernel gives back.
    Counters a host cannot report are ``None``.
    """

    cpus: int
    memory_mib: int
    available_memory_mib: int
    running_guests: int
    cpu_busy_ns: int | None
    cpu_total_ns: int | None
    # Total memory by the same statistics as `available_memory_mib` (None: the driver has
    # none); it can differ from `memory_mib` (libvirt's node info), so "used" is this
    # minus the available figure.
    memory_stats_total_mib: int | None = None


@dataclass(frozen=True, slots=True)
class MigrationStats:
    """QEMU's own account of a finished live migration: its total time and the guest's
    downtime (the pause while the last memory pages and the device state move), in
    milliseconds; ``None`` where the hypervisor does not report one."""

    elapsed_ms: int | None
    downtime_ms: int | None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One internal snapshot of a domain's disk; ``with_memory`` when the guest was running
    (its RAM is in the snapshot and a revert resumes it), else disk-only in effect (taken of
    a QEMU started paused, which ran no guest code; a revert leaves the desktop stopped)."""

    name: str
    with_memory: bool
    created_at: int


@dataclass(frozen=True, slots=True)
class BackupJob:
    """The state of a domain's backup job: ``active`` while it copies; when it is over,
    ``ok`` says whether it finished and ``error`` why not."""

    active: bool
    processed_bytes: int = 0
    total_bytes: int = 0
    ok: bool | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class CopyJob:
    """A disk copy (``Hypervisor.copy_start``): ``active`` while data moves; when it is
    over, ``ok`` says whether the copy is whole (the new volume no longer needs its
    source) and ``error`` why not."""

    active: bool
    copied_bytes: int = 0
    total_bytes: int = 0
    ok: bool | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class DomainStats:
    """One running domain's cumulative counters and memory, from one bulk stats call.

    Counters (``cpu_time_ns``, disk and network totals over all its disks and cards) only
    grow while the domain runs; a rate is their change between two samples. They start
    again from zero when the domain restarts. ``memory_used_kib`` is what the guest uses
    by its balloon driver's account (available minus unused) where it reports that, else
    what its QEMU process holds (RSS). Values a host cannot report are ``None``.
    """

    name: str
    uuid: str
    vcpus: int | None
    cpu_time_ns: int | None
    memory_used_kib: int | None
    memory_max_kib: int | None
    block_rd_bytes: int = 0
    block_wr_bytes: int = 0
    block_rd_reqs: int = 0
    block_wr_reqs: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    net_rx_packets: int = 0
    net_tx_packets: int = 0


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A storage pool's size and how much of it is allocated, in bytes."""

    capacity_bytes: int
    allocation_bytes: int
    available_bytes: int
