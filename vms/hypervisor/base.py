"""The interface the rest of the portal uses to drive a hypervisor.

Every operation takes keyword arguments, returns the project's own dataclasses, and raises
``HypervisorError`` only. Operations are idempotent where that makes sense (define an existing
domain, delete a missing volume, stop a stopped desktop), so Celery can retry them freely.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .errors import HypervisorError
from .types import (
    BackupJob,
    ConsoleEndpoint,
    CopyJob,
    DomainInfo,
    DomainSpec,
    DomainStats,
    HostCapacity,
    HostLoad,
    Lease,
    MigrationStats,
    NetworkSpec,
    PoolUsage,
    PowerState,
    SnapshotInfo,
    VolumeInfo,
)

__all__ = ["Hypervisor"]


class Hypervisor(ABC):
    """One hypervisor host, named by a URI whose scheme picked this backend (``registry``)."""

    uri: str

    # --- storage -----------------------------------------------------------------------

    @abstractmethod
    def ensure_pool(self, *, name: str, path: str) -> None:
        """Make sure a directory pool ``name`` at ``path`` exists, is built, active, autostart."""

    @abstractmethod
    def import_base_volume(self, *, pool: str, name: str, source_path: str) -> VolumeInfo:
        """Copy a local image file into the pool (over a libvirt stream, so remote hosts work).

        An existing complete volume of that name is returned as is. An incomplete one (an
        interrupted upload) is replaced, unless linked clones are built on it: then this
        raises a permanent ``HypervisorError`` and the volume stays as it is.
        """

    @abstractmethod
    def clone_volume(
        self, *, pool: str, name: str, base_path: str, capacity_bytes: int
    ) -> VolumeInfo:
        """Create a linked clone: a qcow2 overlay whose backing file is ``base_path``.

        An existing volume of that name over the same base is returned (idempotent).
        """

    @abstractmethod
    def delete_volume(self, *, pool: str, name: str) -> None:
        """Delete a volume; a missing volume (or pool) is not an error."""

    @abstractmethod
    def list_volumes(self, *, pool: str, prefix: str) -> list[VolumeInfo]:
        """Volumes of ``pool`` whose names start with ``prefix``, sorted by name."""

    def list_volume_names(self, *, pool: str, prefix: str) -> list[str]:
        """The names alone of ``list_volumes``, sorted: a backend may answer them without
        describing each volume (a shared pool lists every desktop's disk on every host)."""
        return [volume.name for volume in self.list_volumes(pool=pool, prefix=prefix)]

    # --- domains -----------------------------------------------------------------------

    @abstractmethod
    def define_domain(self, spec: DomainSpec) -> DomainInfo:
        """Define (persistently) a desktop's domain; an existing one of that name is returned."""

    @abstractmethod
    def start(self, *, name: str) -> None:
        """Power on; already running is fine, paused is resumed."""

    @abstractmethod
    def shutdown(self, *, name: str, timeout_s: float) -> None:
        """ACPI power button, wait until off, force off after ``timeout_s``; off is fine."""

    @abstractmethod
    def reboot(self, *, name: str) -> None:
        """Reboot a running domain (a shut-off one is started)."""

    def migrate_live(
        self, *, name: str, to_uri: str, to_address: str, allow_unsafe: bool = False
    ) -> MigrationStats:
        """Move the running domain live to the hypervisor at ``to_uri`` (disks on storage
        both hosts share), its memory over ``to_address``, where its displays will listen
        too; QEMU's figures of the move. On failure the domain keeps running here. The
        hypervisor's own storage-safety check stands unless ``allow_unsafe`` (lab hosts
        whose shared pool is a local directory). Not abstract: a backend that cannot
        migrate says so."""
        raise HypervisorError(f"{type(self).__name__} cannot migrate desktops", permanent=True)

    @abstractmethod
    def destroy(self, *, name: str) -> None:
        """Force off (pull the plug); already off or missing is fine."""

    @abstractmethod
    def undefine(self, *, name: str) -> None:
        """Force off if needed and remove the definition; missing is fine. Keeps disks."""

    @abstractmethod
    def state(self, *, name: str) -> PowerState:
        """The power state; ``PowerState.missing`` when no such domain exists."""

    @abstractmethod
    def list_domains(self, *, prefix: str) -> list[DomainInfo]:
        """Domains whose names start with ``prefix``, sorted by name."""

    # --- networks (docs/networks.md) ---------------------------------------------------
    # Not abstract: a backend without networks says so when a desktop needs one.

    def ensure_network(self, spec: NetworkSpec) -> None:
        """Make sure the network and its guard nwfilter exist as ``spec`` says, active and
        autostarted, with exactly ``spec.hosts`` as fixed DHCP hosts (a stopped or missing
        network is started or defined again: this is reconcile's repair too)."""
        raise HypervisorError(f"{type(self).__name__} has no networks", permanent=True)

    def remove_network(self, *, name: str, filter_name: str) -> None:
        """Stop and undefine the network and its guard filter; missing is fine."""
        raise HypervisorError(f"{type(self).__name__} has no networks", permanent=True)

    def list_network_names(self, *, prefix: str) -> list[str]:
        """Names of the defined networks that start with ``prefix``, sorted."""
        return []

    def network_leases(self, *, name: str) -> list[Lease]:
        """The network's current DHCP leases; none for a missing or bridged network."""
        return []

    # --- console -----------------------------------------------------------------------

    @abstractmethod
    def console_endpoint(self, *, name: str) -> ConsoleEndpoint:
        """Where the running domain's display listens (from the live XML)."""

    @abstractmethod
    def set_console_password(self, *, name: str, password: str, valid_for_s: int) -> None:
        """Set the live display password, valid for ``valid_for_s`` seconds from now."""

    @abstractmethod
    def screenshot(self, *, name: str) -> bytes:
        """A PNG of the running domain's screen."""

    # --- host --------------------------------------------------------------------------

    @abstractmethod
    def kvm_available(self) -> bool:
        """Whether domains of type ``kvm`` really work on this host (else use ``qemu``).

        Cached per URI for the life of the process. Raises a transient ``HypervisorError``
        only when the hypervisor cannot be asked at all (nothing is cached then).
        """

    def host_capacity(self, *, pool: str) -> HostCapacity:
        """The host's CPUs and memory, and the size of storage pool ``pool`` (for the
        capacity a new host is registered with). Not abstract: a backend that cannot tell
        says so, and the admin enters the figures by hand."""
        raise HypervisorError(
            f"{type(self).__name__} cannot report a host's capacity; enter it by hand",
            permanent=True,
        )

    def host_load(self) -> HostLoad:
        """The host's CPUs, memory, available memory, running guests and CPU counters, for
        the heartbeat (placement by live load). Not abstract: a backend that cannot tell
        says so, and placement then uses the admin's figures alone."""
        raise HypervisorError(f"{type(self).__name__} cannot report a host's load", permanent=True)

    # --- snapshots, checkpoints and backups (libvirt_disks.py; docs/backups.md) ------------
    # Not abstract: a backend without them says so, and the portal refuses the action.

    def _cannot(self, what: str) -> HypervisorError:
        return HypervisorError(f"{type(self).__name__} cannot {what}", permanent=True)

    def snapshot_create(self, *, name: str, snapshot: str) -> SnapshotInfo:
        """Take internal snapshot ``snapshot`` (with memory if running); idempotent."""
        raise self._cannot("take snapshots")

    def snapshot_list(self, *, name: str) -> list[SnapshotInfo]:
        raise self._cannot("list snapshots")

    def snapshot_revert(self, *, name: str, snapshot: str) -> PowerState:
        """Go back to ``snapshot``; the power state it leaves the domain in."""
        raise self._cannot("revert snapshots")

    def snapshot_delete(self, *, name: str, snapshot: str) -> None:
        raise self._cannot("delete snapshots")

    def checkpoint_names(self, *, name: str) -> list[str]:
        raise self._cannot("list checkpoints")

    def backup_start(
        self, *, name: str, target_path: str, checkpoint: str, incremental_from: str | None
    ) -> bool:
        """Start a push backup into ``target_path``; True if QEMU was started paused for it."""
        raise self._cannot("back up desktops")

    def backup_job(self, *, name: str) -> BackupJob:
        raise self._cannot("back up desktops")

    def backup_abort(self, *, name: str, checkpoint: str) -> None:
        raise self._cannot("back up desktops")

    def backup_finish(self, *, name: str) -> None:
        raise self._cannot("back up desktops")

    def volume_info(self, *, pool: str, name: str) -> VolumeInfo | None:
        """The volume measured now (allocation after a pool refresh); None if missing."""
        raise self._cannot("measure volumes")

    def full_copy_volume(self, *, pool: str, name: str, base_path: str) -> VolumeInfo:
        """A new independent volume holding the flattened contents of ``base_path``."""
        raise self._cannot("copy volumes")

    def copy_start(
        self, *, pool: str, name: str, source_path: str, job: str, bandwidth_mib_s: int = 0
    ) -> VolumeInfo:
        """Start copying everything the qcow2 chain at ``source_path`` reads into a new
        volume ``name`` in ``pool``, as job ``job`` (followed with ``copy_job``, stopped
        with ``copy_abort``); ``bandwidth_mib_s`` caps it (0: no cap)."""
        raise self._cannot("copy disks")

    def copy_job(self, *, job: str, pool: str, name: str) -> CopyJob:
        """How copy ``job`` into volume ``name`` is doing; when it is over, its helper is
        gone and ``ok`` says whether the volume is whole."""
        raise self._cannot("copy disks")

    def copy_abort(self, *, job: str) -> None:
        """Stop copy ``job`` if it runs (the caller removes the half-filled volume)."""
        raise self._cannot("copy disks")

    def domain_stats(self, *, prefix: str) -> list[DomainStats]:
        """The counters and memory of every running domain whose name starts with
        ``prefix``, read in one bulk call (the monitoring sample). Not abstract: a backend
        that cannot tell says so, and its desktops go unmeasured."""
        raise HypervisorError(
            f"{type(self).__name__} cannot report domain statistics", permanent=True
        )

    def pool_usage(self, *, pool: str) -> PoolUsage | None:
        """Storage pool ``pool``'s size and allocation; ``None`` when it does not exist."""
        raise HypervisorError(f"{type(self).__name__} cannot report a pool's usage", permanent=True)
