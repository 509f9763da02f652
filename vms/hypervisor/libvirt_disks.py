"""Snapshots, checkpoints and backups of a desktop's disk through libvirt (the libvirt
backend's half of ``base.DiskOps``).

What Debian 12's libvirt 9.0 with QEMU 7.2 does, probed on this machine (docs/backups.md):

* Snapshots are **internal** (kept inside the desktop's qcow2): libvirt 9.0 cannot revert an
  external snapshot (that arrived in 9.9), and internal ones need no extra files to clean up.
  A running guest is snapshotted with its memory. A stopped desktop's snapshot is taken of a
  QEMU started paused (no guest code runs: in effect disk-only), because libvirt refuses an
  offline snapshot while checkpoints exist ("cannot perform block operations while checkpoint
  exists"); reverting to it leaves the desktop stopped.
* Backups use ``backupBegin`` in push mode, with a ``<domaincheckpoint>`` (a persistent dirty
  bitmap in the qcow2) made by every backup, so the next one can be incremental. A backup of
  a stopped desktop runs on a QEMU started paused: libvirt backs up only active domains.
* Checkpoints are deleted only on an active domain (libvirt: "cannot delete checkpoint for
  inactive domain"), and QEMU refuses to load an internal snapshot while the image has
  dirty bitmaps ("Device has active dirty bitmaps"). A revert therefore drops every
  checkpoint first, so the backup after a revert is a full one (the disk went back in time;
  the bitmaps would no longer describe the change since the last backup anyway).
* Restores and template versions copy a qcow2 chain into a new volume with a block pull held
  by a paused helper domain (``copy_start``): unlike libvirt's volume copy, it can be
  measured, capped and aborted.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import libvirt

from .errors import HypervisorError
from .libvirt_errors import or_none
from .types import BackupJob, CopyJob, PowerState, SnapshotInfo, VolumeInfo
from .xml import build_copier_xml, build_pool_xml, build_volume_xml, parse_volume

__all__ = ["LibvirtDiskOps"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Conn = Any
Dom = Any

DISK: Final = "vda"
_CHILDREN: Final = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN
_JOB_DONE: Final = {libvirt.VIR_DOMAIN_JOB_COMPLETED}


def _xml(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def _snapshot_xml(snapshot: str) -> str:
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = snapshot
    return _xml(root)


def _checkpoint_xml(checkpoint: str) -> str:
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = checkpoint
    disks = ET.SubElement(root, "disks")
    ET.SubElement(disks, "disk", name=DISK, checkpoint="bitmap")
    return _xml(root)


def _backup_xml(target_path: str, incremental_from: str | None) -> str:
    root = ET.Element("domainbackup", mode="push")
    if incremental_from:
        ET.SubElement(root, "incremental").text = incremental_from
    disks = ET.SubElement(root, "disks")
    disk = ET.SubElement(disks, "disk", name=DISK, type="file")
    ET.SubElement(disk, "target", file=target_path)
    ET.SubElement(disk, "driver", type="qcow2")
    return _xml(root)


def _snapshot_info(snap: Any) -> SnapshotInfo:
    root = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314 - XML from libvirtd
    return SnapshotInfo(
        name=str(snap.getName()),
        with_memory=root.findtext("state") == "running",
        created_at=int(root.findtext("creationTime") or 0),
    )


def _lookup_snapshot(dom: Dom, snapshot: str) -> Any | None:
    try:
        return dom.snapshotLookupByName(snapshot, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _domain(conn: Conn, name: str) -> Dom:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise HypervisorError(
                f"desktop domain '{name}' does not exist", permanent=True
            ) from None
        raise


@contextmanager
def _active(dom: Dom) -> Iterator[bool]:
    """The domain active for the block: a shut-off one is started paused (no guest code
    runs) and destroyed again afterwards. Yields whether it was started here."""
    if dom.isActive():
        yield False
        return
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    try:
        yield True
    finally:
        if dom.isActive():
            dom.destroy()


def _drop_checkpoints(dom: Dom, keep: frozenset[str] = frozenset()) -> list[str]:
    """Delete the domain's checkpoints (and their bitmaps) except ``keep``; the active
    domain merges each deleted one's bitmap into its parent, so no change is lost."""
    dropped = []
    for checkpoint in dom.listAllCheckpoints(0):
        name = str(checkpoint.getName())
        if name not in keep:
            checkpoint.delete(0)
            dropped.append(name)
    return dropped


class LibvirtDiskOps:
    """The disk operations of ``LibvirtHypervisor`` (mixed in; it supplies ``_call``)."""

    _call: Callable[..., Any]

    def _on_domain(self, what: str, name: str, op: Callable[[Dom], T]) -> T:
        result: T = self._call(what, lambda conn: op(_domain(conn, name)))
        return result

    # --- snapshots -----------------------------------------------------------------------

    def snapshot_create(self, *, name: str, snapshot: str) -> SnapshotInfo:
        """An internal snapshot: with memory when running, else of a paused QEMU."""

        def op(dom: Dom) -> SnapshotInfo:
            existing = _lookup_snapshot(dom, snapshot)
            if existing is not None:
                return _snapshot_info(existing)
            with _active(dom):
                return _snapshot_info(dom.snapshotCreateXML(_snapshot_xml(snapshot), 0))

        return self._on_domain(f"snapshotting '{name}' as '{snapshot}'", name, op)

    def snapshot_list(self, *, name: str) -> list[SnapshotInfo]:
        def op(dom: Dom) -> list[SnapshotInfo]:
            return sorted(
                (_snapshot_info(s) for s in dom.listAllSnapshots(0)), key=lambda s: s.created_at
            )

        return self._on_domain(f"listing the snapshots of '{name}'", name, op)

    def snapshot_revert(self, *, name: str, snapshot: str) -> PowerState:
        """Go back to ``snapshot``; the power state afterwards (running for a snapshot
        with memory, shutoff for one of a stopped desktop). Drops every checkpoint."""

        def op(dom: Dom) -> PowerState:
            snap = _lookup_snapshot(dom, snapshot)
            if snap is None:
                raise HypervisorError(f"'{name}' has no snapshot '{snapshot}'", permanent=True)
            if dom.listAllCheckpoints(0):
                with _active(dom):
                    _drop_checkpoints(dom)
            dom.revertToSnapshot(snap, 0)
            if not _snapshot_info(snap).with_memory and dom.isActive():
                dom.destroy()  # it was taken of a paused QEMU: the desktop stays stopped
            return PowerState.running if dom.isActive() else PowerState.shutoff

        return self._on_domain(f"reverting '{name}' to snapshot '{snapshot}'", name, op)

    def snapshot_delete(self, *, name: str, snapshot: str) -> None:
        """Delete one snapshot (its space in the qcow2 is freed); missing is fine."""

        def op(dom: Dom) -> None:
            snap = _lookup_snapshot(dom, snapshot)
            if snap is None:
                return
            with _active(dom):
                snap.delete(0)

        self._on_domain(f"deleting snapshot '{snapshot}' of '{name}'", name, op)

    # --- checkpoints and backups ---------------------------------------------------------

    def checkpoint_names(self, *, name: str) -> list[str]:
        def op(dom: Dom) -> list[str]:
            return sorted(str(c.getName()) for c in dom.listAllCheckpoints(0))

        return self._on_domain(f"listing the checkpoints of '{name}'", name, op)

    def backup_start(
        self, *, name: str, target_path: str, checkpoint: str, incremental_from: str | None
    ) -> bool:
        """Start a push-mode backup of the disk into ``target_path`` (a new qcow2 that
        libvirt creates), making checkpoint ``checkpoint``; with ``incremental_from`` only
        the clusters changed since that checkpoint are written. A stopped desktop's QEMU is
        started paused for it: returns True then, and ``backup_finish`` powers it off.
        Checkpoints other than ``incremental_from`` are dropped first (their bitmaps would
        only cost every write)."""

        def op(dom: Dom) -> bool:
            started = False
            if not dom.isActive():
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
                started = True
            try:
                keep = frozenset({incremental_from}) if incremental_from else frozenset()
                _drop_checkpoints(dom, keep)
                dom.backupBegin(
                    _backup_xml(target_path, incremental_from), _checkpoint_xml(checkpoint), 0
                )
            except BaseException:
                if started and dom.isActive():
                    dom.destroy()
                raise
            return started

        return self._on_domain(f"starting a backup of '{name}'", name, op)

    def backup_job(self, *, name: str) -> BackupJob:
        """How the domain's backup job is doing (or how its last job ended)."""

        def op(dom: Dom) -> BackupJob:
            if not dom.isActive():
                return BackupJob(active=False, ok=False, error="the desktop's QEMU stopped")
            stats = dom.jobStats(0)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
                return BackupJob(
                    active=True,
                    processed_bytes=int(stats.get("disk_processed", 0)),
                    total_bytes=int(stats.get("disk_total", 0)),
                )
            done = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            ok = done.get("type") in _JOB_DONE and done.get("success", True)
            return BackupJob(
                active=False,
                processed_bytes=int(done.get("disk_processed", 0)),
                total_bytes=int(done.get("disk_total", 0)),
                ok=bool(ok),
                error="" if ok else str(done.get("errmsg", "the backup job failed")),
            )

        return self._on_domain(f"reading the backup job of '{name}'", name, op)

    def backup_abort(self, *, name: str, checkpoint: str) -> None:
        """Stop a running backup job, if any, and drop the checkpoint it made (its bitmap
        merges back into the previous one, so the next incremental misses nothing)."""

        def op(dom: Dom) -> None:
            if not dom.isActive():
                return
            try:  # a job that ends meanwhile: "backup job data missing"
                if dom.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE):
                    dom.abortJob()
            except libvirt.libvirtError as err:
                log.info("aborting the backup of %s: %s", name, err)
            for found in dom.listAllCheckpoints(0):
                if found.getName() == checkpoint:
                    found.delete(0)

        self._on_domain(f"aborting the backup of '{name}'", name, op)

    def backup_finish(self, *, name: str) -> None:
        """Power off a QEMU that ``backup_start`` started paused (only a paused one)."""

        def op(dom: Dom) -> None:
            if dom.isActive() and dom.state(0)[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.destroy()

        self._on_domain(f"ending the backup of '{name}'", name, op)

    # --- volumes -------------------------------------------------------------------------

    def volume_info(self, *, pool: str, name: str) -> VolumeInfo | None:
        """A volume's description with its allocation measured now (the pool refreshed
        first, as qcow2 files grow outside libvirt's view); None when it is missing."""

        def op(conn: Conn) -> VolumeInfo | None:
            p = conn.storagePoolLookupByName(pool)
            try:
                p.refresh(0)
            except libvirt.libvirtError as err:  # e.g. an upload is running; not fatal
                log.debug("refreshing pool %s: %s", pool, err)
            try:
                return parse_volume(p.storageVolLookupByName(name).XMLDesc(0))
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return None
                raise

        result: VolumeInfo | None = self._call(f"measuring volume '{name}' in '{pool}'", op)
        return result

    # --- disk copies (restores, template versions) ----------------------------------------

    def copy_start(
        self, *, pool: str, name: str, source_path: str, job: str, bandwidth_mib_s: int = 0
    ) -> VolumeInfo:
        """A block pull: volume ``name`` is made as an overlay of ``source_path``, held by a
        transient helper domain ``job`` started paused (no guest code runs), and QEMU pulls
        the whole chain into it. Unlike ``createXMLFrom`` (one blocking call), the job can
        be measured (``copy_job``), capped and aborted. A volume or helper of that name left
        by a cut-off run is replaced. The source must not be written meanwhile: QEMU holds
        it read-only, so a desktop that would open it for writing is refused."""

        def op(conn: Conn) -> VolumeInfo:
            _destroy_domain(conn, job)
            target = conn.storagePoolLookupByName(pool)
            stale = _lookup_volume(target, name)
            if stale is not None:
                stale.delete(0)
            capacity = _capacity_of(conn, f"copysrc-{job}"[:50], source_path)
            xml = build_volume_xml(name=name, capacity_bytes=capacity, backing_path=source_path)
            volume = parse_volume(target.createXML(xml, 0).XMLDesc(0))
            try:
                flags = libvirt.VIR_DOMAIN_START_PAUSED
                dom = conn.createXML(build_copier_xml(name=job, disk_path=volume.path), flags)
                dom.blockPull(DISK, bandwidth_mib_s, 0)
            except BaseException:
                _destroy_domain(conn, job)
                target.storageVolLookupByName(name).delete(0)
                raise
            return volume

        result: VolumeInfo = self._call(f"copying {source_path} into '{pool}' as '{name}'", op)
        return result

    def copy_job(self, *, job: str, pool: str, name: str) -> CopyJob:
        """While the pull runs: its figures. Once it ends, the helper is powered off and the
        volume read back: whole when it no longer names a backing file (QEMU drops it only
        when every cluster was copied)."""

        def op(conn: Conn) -> CopyJob:
            dom = _lookup_domain(conn, job)
            if dom is not None:
                info = dom.blockJobInfo(DISK, 0) if dom.isActive() else {}
                if info:
                    return CopyJob(active=True, copied_bytes=info["cur"], total_bytes=info["end"])
                _destroy_domain(conn, job)
            p = conn.storagePoolLookupByName(pool)
            p.refresh(0)
            found = _lookup_volume(p, name)
            if found is None:
                return CopyJob(active=False, ok=False, error="the new volume is gone")
            volume = parse_volume(found.XMLDesc(0))
            if volume.backing_path is not None:
                return CopyJob(active=False, ok=False, error="the copy stopped before its end")
            size = volume.capacity_bytes
            return CopyJob(active=False, copied_bytes=size, total_bytes=size, ok=True)

        result: CopyJob = self._call(f"following the copy '{job}'", op)
        return result

    def copy_abort(self, *, job: str) -> None:
        def op(conn: Conn) -> None:
            dom = _lookup_domain(conn, job)
            if dom is None:
                return
            try:
                dom.blockJobAbort(DISK, 0)
            except libvirt.libvirtError as err:
                log.info("aborting the copy %s: %s", job, err)  # it may have just ended
            _destroy_domain(conn, job)

        self._call(f"aborting the copy '{job}'", op)


def _lookup_domain(conn: Conn, name: str) -> Dom | None:
    return or_none(lambda: conn.lookupByName(name), libvirt.VIR_ERR_NO_DOMAIN)


def _destroy_domain(conn: Conn, name: str) -> None:
    """Power off a transient helper domain (it is gone then); missing is fine."""
    dom = _lookup_domain(conn, name)
    if dom is None:
        return
    try:
        dom.destroy()
    except libvirt.libvirtError as err:
        if err.get_error_code() not in (
            libvirt.VIR_ERR_NO_DOMAIN,
            libvirt.VIR_ERR_OPERATION_INVALID,
        ):
            raise


def _capacity_of(conn: Conn, scratch: str, source_path: str) -> int:
    """The virtual size of the image at ``source_path``, read by libvirt through a
    transient pool over its folder (so it works on a remote host too); a volume of a pool
    libvirt knows (a desktop's disk) is read there, as a second pool over the same folder
    would be refused."""
    known = or_none(
        lambda: conn.storageVolLookupByPath(source_path), libvirt.VIR_ERR_NO_STORAGE_VOL
    )
    if known is not None:
        return parse_volume(known.XMLDesc(0)).capacity_bytes
    source_pool = _transient_pool(conn, scratch, os.path.dirname(source_path))
    try:
        source = source_pool.storageVolLookupByName(os.path.basename(source_path))
        return parse_volume(source.XMLDesc(0)).capacity_bytes
    finally:
        source_pool.destroy()


def _lookup_volume(pool: Any, name: str) -> Any | None:
    return or_none(lambda: pool.storageVolLookupByName(name), libvirt.VIR_ERR_NO_STORAGE_VOL)


def _transient_pool(conn: Conn, name: str, folder: str) -> Any:
    """A transient directory pool over ``folder`` (gone when destroyed), replacing one of
    that name a killed run left behind."""
    try:
        conn.storagePoolLookupByName(name).destroy()
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
    return conn.storagePoolCreateXML(build_pool_xml(name=name, path=folder), 0)
