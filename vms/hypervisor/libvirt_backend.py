"""``Hypervisor`` implemented with libvirt-python, registered for ``qemu`` and ``test`` URIs.

Works against ``qemu:///system`` (production), ``qemu+ssh://host/system`` (remote hosts:
uploads use libvirt streams, nothing assumes a shared file system) and ``test:///default``
(libvirt's in-process test driver, used by the fast tests). libvirt's other drivers (Xen,
ESXi, Hyper-V) are not registered: the domains built here are QEMU's (see
docs/hypervisors.md for what each would need).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import libvirt
from PIL import Image, UnidentifiedImageError

from . import xml as vxml
from .base import Hypervisor
from .connection import LibvirtConnection
from .errors import HypervisorError
from .kvmprobe import run_kvm_probe
from .libvirt_disks import LibvirtDiskOps
from .libvirt_errors import POOL_FULL_OR_READONLY_HINTS, RETRY_NOTE, from_libvirt_error
from .libvirt_errors import or_none as _or_none
from .libvirt_networks import LibvirtNetworkOps
from .libvirt_uri import check_libvirt_uri
from .registry import register_backend
from .stats import domain_stats_from
from .types import (
    ConsoleEndpoint,
    DomainInfo,
    DomainSpec,
    DomainStats,
    HostCapacity,
    HostLoad,
    MigrationStats,
    PoolUsage,
    PowerState,
    VolumeInfo,
)

__all__ = ["LIBVIRT_SCHEMES", "LibvirtHypervisor"]

# The URI schemes (before any '+transport') this backend serves: QEMU/KVM hosts, and
# libvirt's in-process test driver.
LIBVIRT_SCHEMES: Final[tuple[str, ...]] = ("qemu", "test")

log = logging.getLogger(__name__)

T = TypeVar("T")
D = TypeVar("D", DomainInfo, VolumeInfo)
Conn = Any  # libvirt.virConnect (libvirt-python ships no type information)
Dom = Any  # libvirt.virDomain
Pool = Any  # libvirt.virStoragePool
Vol = Any  # libvirt.virStorageVol

_STATE_MAP: Final[dict[int, PowerState]] = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.other,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.running,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.running,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.paused,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.running,  # shutting down, still running
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.shutoff,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.crashed,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.other,
}
_UNDEFINE_FLAGS: Final = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
_QCOW2_MAGIC: Final = b"QFI\xfb"
_STREAM_CHUNK: Final = 1024 * 1024
_SHUTDOWN_POLL_S: Final = 0.2
_SHUTDOWN_REPRESS_S: Final = 3.0

_kvm_cache: dict[str, bool] = {}


def _code(err: libvirt.libvirtError) -> int | None:
    code = err.get_error_code()
    return int(code) if code is not None else None


def _msg(err: libvirt.libvirtError) -> str:
    return str(err.get_error_message() or err).strip()


def _is_local_qemu(uri: str) -> bool:
    parsed = urlparse(uri)
    return parsed.scheme == "qemu" and not parsed.netloc


def _is_local(uri: str) -> bool:
    parsed = urlparse(uri)
    return "+" not in parsed.scheme and not parsed.netloc


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return os.path.normpath(a) == os.path.normpath(b)


def _image_format_and_size(path: str) -> tuple[str, int, int]:
    """(format, virtual size, file size) of a local image file; qcow2 or raw."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        header = fh.read(32)
    if len(header) >= 32 and header[:4] == _QCOW2_MAGIC:
        return "qcow2", int.from_bytes(header[24:32], "big"), file_size
    return "raw", file_size, file_size


def _domain_state(dom: Dom) -> PowerState:
    state, reason = dom.state(0)
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED:
        return PowerState.crashed  # guest panicked; QEMU keeps it paused
    return _STATE_MAP.get(int(state), PowerState.other)


def _resume_or_destroy(dom: Dom) -> bool:
    """Resume a paused domain; if QEMU cannot (it stopped on an internal error and wants a
    reset), force it off instead. Returns whether it is running afterwards."""
    try:
        dom.resume()
        return True
    except libvirt.libvirtError as err:
        log.warning("cannot resume %s (%s); forcing it off", dom.name(), _msg(err))
        if dom.isActive():
            dom.destroy()
        return False


def _domain_info(dom: Dom) -> DomainInfo:
    return DomainInfo(
        name=str(dom.name()),
        uuid=str(dom.UUIDString()),
        state=_domain_state(dom),
        desktop_id=vxml.parse_desktop_id(dom.XMLDesc(0)),
    )


def _volume_info(vol: Vol) -> VolumeInfo:
    return vxml.parse_volume(vol.XMLDesc(0))


def _described(objects: list[Any], prefix: str, describe: Callable[[Any], D], gone: int) -> list[D]:
    """Descriptions of the objects whose names start with ``prefix``, sorted by name; an
    object removed between listing and describing (libvirt error ``gone``) is skipped."""
    result: list[D] = []
    for obj in objects:
        if str(obj.name()).startswith(prefix):
            described = _or_none(partial(describe, obj), gone)
            if described is not None:
                result.append(described)
    return sorted(result, key=lambda item: item.name)


def _lookup_domain(conn: Conn, name: str) -> Dom | None:
    return _or_none(lambda: conn.lookupByName(name), libvirt.VIR_ERR_NO_DOMAIN)


def _require_domain(conn: Conn, name: str) -> Dom:
    dom = _lookup_domain(conn, name)
    if dom is None:
        raise HypervisorError(f"desktop domain '{name}' does not exist", permanent=True)
    return dom


def _require_running(conn: Conn, name: str) -> Dom:
    dom = _require_domain(conn, name)
    if not dom.isActive():
        raise HypervisorError(f"desktop domain '{name}' is not running", permanent=True)
    return dom


def _force_off(dom: Dom) -> bool:
    """Destroy ``dom`` if it runs; False if the domain vanished meanwhile."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as err:
        if _code(err) == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        if _code(err) != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
            raise  # "domain is not running" after a concurrent destroy is fine
    return True


# Live, kept defined on the destination and removed from the source. No UNSAFE: libvirt
# checks that every writable disk is on storage it knows to be shared (NFS, GlusterFS,
# a cluster file system, network disks) and that the page cache cannot hand the
# destination stale data (cache none/directsync, or a QEMU that drops its cache at the
# switch-over, as 7.2 does). It refuses a pool on a local file system whatever the cache
# mode: lab hosts share one local directory, which libvirt cannot know to be shared, so
# there (and only where the caller allows it) UNSAFE is added after that refusal.
_MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


_UNSAFE_REFUSED = (
    "libvirt refuses to migrate it safely ({}): the disk pool must be on storage libvirt "
    "knows to be shared (NFS or a cluster file system; docs/fleet.md). Lab hosts, which "
    "share one local directory, need MIGRATION_ALLOW_UNSAFE"
)


def _migration_stats(arrived: libvirt.virDomain | None) -> MigrationStats:
    """The completed migration job's figures, kept by the destination's libvirt."""
    try:
        stats = arrived.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED) if arrived else {}
    except libvirt.libvirtError:
        stats = {}
    return MigrationStats(elapsed_ms=stats.get("time_elapsed"), downtime_ms=stats.get("downtime"))


def _migration_params(destination_xml: str, to_address: str) -> dict[str, Any]:
    # The memory stream goes to the destination's own address, never to whatever its
    # hostname resolves to.
    return {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: destination_xml,
        libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{to_address}",
        libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: to_address,
    }


def _lookup_pool(conn: Conn, name: str) -> Pool | None:
    return _or_none(lambda: conn.storagePoolLookupByName(name), libvirt.VIR_ERR_NO_STORAGE_POOL)


def _require_pool(conn: Conn, name: str) -> Pool:
    pool = _lookup_pool(conn, name)
    if pool is None:
        raise HypervisorError(
            f"storage pool '{name}' does not exist on the hypervisor (create it first)",
            permanent=True,
        )
    if not pool.isActive():
        raise HypervisorError(
            f"storage pool '{name}' is not active (start it with: virsh pool-start {name})",
            permanent=True,
        )
    return pool


def _lookup_volume(pool: Pool, name: str) -> Vol | None:
    return _or_none(lambda: pool.storageVolLookupByName(name), libvirt.VIR_ERR_NO_STORAGE_VOL)


def _lookup_volume_by_path(conn: Conn, path: str) -> Vol | None:
    """The volume at ``path``, refreshing the pool of its directory once if not found."""

    def find() -> Vol | None:
        return _or_none(lambda: conn.storageVolLookupByPath(path), libvirt.VIR_ERR_NO_STORAGE_VOL)

    vol = find()
    if vol is not None:
        return vol
    # Files put into a pool's directory outside libvirt are only seen after a refresh.
    try:
        pool = conn.storagePoolLookupByTargetPath(os.path.dirname(path))
        if not pool.isActive():
            return None
        pool.refresh(0)
    except libvirt.libvirtError:
        return None
    return find()


def _disks_built_on(p: Pool, path: str) -> list[str]:
    """Names of the volumes in pool ``p`` whose backing file is ``path``."""
    users = []
    for vol in p.listAllVolumes(0):
        try:
            info = _volume_info(vol)
        except libvirt.libvirtError:  # deleted while we looked
            continue
        if _same_path(info.backing_path, path):
            users.append(info.name)
    return sorted(users)


def _refuse_replacing_a_used_base(p: Pool, vol: Vol, pool: str, name: str) -> None:
    """A base with linked clones on it is their disk's lower half: replacing it (or
    deleting it) would silently swap or destroy every desktop built on it."""
    users = _disks_built_on(p, vol.path())
    if users:
        shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
        raise HypervisorError(
            f"volume '{name}' in storage pool '{pool}' is the base of desktop disk(s) {shown}; "
            "it is not replaced while they exist. Delete those desktops first, or import the "
            "image under another name.",
            permanent=True,
        )


def _is_pool_space_or_permission_problem(message: str) -> bool:
    return any(hint in message for hint in POOL_FULL_OR_READONLY_HINTS)


def _pool_problem(pool: str, name: str, text: str) -> str:
    """What a person needs to know when a pool cannot take a new volume."""
    # libvirt quotes the whole qemu-img command line; its last line says what went wrong.
    detail = text[text.rfind("qemu-img:") :] if "qemu-img:" in text else text
    low = text.lower()
    if "no space" in low or "not enough space" in low or "quota exceeded" in low:
        return (
            f"storage pool '{pool}' is full: there is no room for the new disk '{name}'. "
            f"Free space in the pool (or enlarge it), then try again. ({detail})"
        )
    reason = "read-only file system" if "read-only" in low else "permission denied"
    return (
        f"storage pool '{pool}' is not writable ({reason}): the new disk '{name}' cannot be "
        f"created. Check the pool's directory and how it is mounted, then try again. ({detail})"
    )


def _is_missing_backing(message: str) -> bool:
    low = message.lower()
    return "backing" in low and ("inaccessible" in low or "no such file" in low)


class LibvirtHypervisor(LibvirtDiskOps, LibvirtNetworkOps, Hypervisor):
    """A hypervisor reached through one libvirt URI (``qemu:///system``, ``test:///default``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._connection = LibvirtConnection(uri)

    def __repr__(self) -> str:
        return f"LibvirtHypervisor({self.uri!r})"

    # --- plumbing ------------------------------------------------------------------------

    def _call(self, what: str, op: Callable[[Conn], T], *, secrets: tuple[str, ...] = ()) -> T:
        """Run ``op`` on the connection; libvirt errors become ``HypervisorError``.

        ``secrets`` are scrubbed from libvirt's messages (our own messages never hold any).
        """
        try:
            return self._connection.call(op)
        except libvirt.libvirtError as err:
            if _code(err) is not None:
                raise from_libvirt_error(err, what, secrets=secrets) from None
        # An error without details: libvirt-python reads the thread's "last error" after
        # the failed call, and a libvirt object freed in between (garbage collection runs
        # __del__ -> virXxxFree, which resets it) can wipe it. Every operation here is
        # idempotent, so run it once more to learn what really happens.
        log.debug("libvirt error without details while %s; retrying once", what)
        try:
            return self._connection.call(op)
        except libvirt.libvirtError as err:
            raise from_libvirt_error(err, what, secrets=secrets) from None

    # --- storage -------------------------------------------------------------------------

    def ensure_pool(self, *, name: str, path: str) -> None:
        def op(conn: Conn) -> None:
            pool = _lookup_pool(conn, name)
            if pool is None:
                try:
                    pool = conn.storagePoolDefineXML(vxml.build_pool_xml(name=name, path=path), 0)
                except libvirt.libvirtError:
                    pool = _lookup_pool(conn, name)  # defined concurrently by someone else?
                    if pool is None:
                        raise
                    log.info("storage pool %s was defined concurrently", name)
                else:
                    log.info("defined storage pool %s at %s", name, path)
            current_path = vxml.parse_pool_path(pool.XMLDesc(0))
            if not _same_path(current_path, path):
                raise HypervisorError(
                    f"storage pool '{name}' already exists at {current_path}, not at {path}",
                    permanent=True,
                )
            if not pool.isActive():
                try:
                    pool.build(0)  # a dir pool: mkdir -p (harmless if it exists)
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():
                        raise
            else:
                try:
                    pool.refresh(0)
                except libvirt.libvirtError as err:  # e.g. an upload is running; not fatal
                    log.debug("refreshing pool %s: %s", name, _msg(err))
            if not pool.autostart():
                pool.setAutostart(1)

        self._call(f"preparing storage pool '{name}' at {path}", op)

    def import_base_volume(self, *, pool: str, name: str, source_path: str) -> VolumeInfo:
        try:
            fmt, _virtual_size, file_size = _image_format_and_size(source_path)
        except FileNotFoundError:
            raise HypervisorError(
                f"source image {source_path} is missing", permanent=True
            ) from None
        except OSError as err:
            raise HypervisorError(
                f"source image {source_path} cannot be read: {err.strerror}", permanent=True
            ) from None
        log.debug("importing %s (%s, %d bytes) as %s/%s", source_path, fmt, file_size, pool, name)

        def op(conn: Conn) -> VolumeInfo:
            p = _require_pool(conn, pool)
            vol = _lookup_volume(p, name)
            if vol is not None:
                physical = vxml.parse_physical_bytes(vol.XMLDesc(0))
                if physical is None or physical == file_size:
                    return _volume_info(vol)
                _refuse_replacing_a_used_base(p, vol, pool, name)
                log.warning(
                    "volume %s/%s is incomplete (%s of %d bytes); importing again",
                    pool,
                    name,
                    physical,
                    file_size,
                )
                try:
                    vol.delete(0)
                except libvirt.libvirtError as err:
                    if "in use" in _msg(err):  # another task is uploading it right now
                        raise HypervisorError(
                            f"volume '{name}' in storage pool '{pool}' is being imported "
                            "by another task",
                            permanent=False,
                        ) from None
                    raise
            # A raw volume of exactly the file's size, overwritten byte for byte by the
            # upload; the pool refresh afterwards probes the real format (qcow2).
            vol_xml = vxml.build_volume_xml(
                name=name, capacity_bytes=file_size, fmt="raw", allocation_bytes=0
            )
            vol = self._create_volume(p, pool, name, vol_xml)
            try:
                self._upload(conn, vol, source_path, file_size)
            except BaseException:
                try:
                    vol.delete(0)
                except libvirt.libvirtError:
                    log.warning("could not remove partial volume %s/%s", pool, name)
                raise
            p.refresh(0)
            return _volume_info(p.storageVolLookupByName(name))

        return self._call(f"importing {source_path} into storage pool '{pool}' as '{name}'", op)

    @staticmethod
    def _upload(conn: Conn, vol: Vol, source_path: str, size: int) -> None:
        stream = conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with open(source_path, "rb") as fh:
                while chunk := fh.read(_STREAM_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        sent = stream.send(view.tobytes())
                        if sent < 0:
                            raise HypervisorError("upload stream refused data", permanent=False)
                        view = view[sent:]
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise

    @staticmethod
    def _create_volume(
        p: Pool, pool: str, name: str, vol_xml: str, clone_from: Vol | None = None
    ) -> Vol:
        try:
            if clone_from is not None:
                return p.createXMLFrom(vol_xml, clone_from, 0)
            return p.createXML(vol_xml, 0)
        except libvirt.libvirtError as err:
            text = _msg(err)
            if _is_pool_space_or_permission_problem(text):
                raise HypervisorError(_pool_problem(pool, name, text), permanent=True) from None
            raise

    def clone_volume(
        self, *, pool: str, name: str, base_path: str, capacity_bytes: int
    ) -> VolumeInfo:
        def existing(p: Pool) -> VolumeInfo | None:
            vol = _lookup_volume(p, name)
            if vol is None:
                return None
            info = _volume_info(vol)
            if not _same_path(info.backing_path, base_path):
                raise HypervisorError(
                    f"volume '{name}' already exists in storage pool '{pool}' but is not a "
                    f"clone of {base_path} (backing file: {info.backing_path or 'none'})",
                    permanent=True,
                )
            return info

        def op(conn: Conn) -> VolumeInfo:
            p = _require_pool(conn, pool)
            found = existing(p)
            if found is not None:
                return found
            base = _lookup_volume_by_path(conn, base_path)
            if base is None and not (_is_local(self.uri) and os.path.isfile(base_path)):
                raise HypervisorError(f"base image {base_path} is missing", permanent=True)
            base_format, base_capacity = "qcow2", 0
            if base is not None:
                base_info = _volume_info(base)
                base_format = base_info.format or "qcow2"
                base_capacity = base_info.capacity_bytes
            # A disk smaller than its template image would cut the guest's file system.
            capacity = max(capacity_bytes, base_capacity)
            vol_xml = vxml.build_volume_xml(
                name=name,
                capacity_bytes=capacity,
                backing_path=base_path,
                backing_format=base_format,
            )
            try:
                vol = self._create_volume(p, pool, name, vol_xml)
            except libvirt.libvirtError as err:
                if _is_missing_backing(_msg(err)):
                    raise HypervisorError(
                        f"base image {base_path} is missing", permanent=True
                    ) from None
                found = existing(p)  # created concurrently by a retried task?
                if found is not None:
                    return found
                raise
            return _volume_info(vol)

        return self._call(f"creating linked clone '{name}' of {base_path} in '{pool}'", op)

    def full_copy_volume(self, *, pool: str, name: str, base_path: str) -> VolumeInfo:
        """Create an independent full copy of ``base_path`` (slow).

        Not part of ``Hypervisor``: the portal only makes linked clones. The bench measures
        a full copy against them (bench/clone.py), and the tests check it.
        """

        def op(conn: Conn) -> VolumeInfo:
            p = _require_pool(conn, pool)
            vol = _lookup_volume(p, name)
            if vol is not None:
                return _volume_info(vol)
            base = _lookup_volume_by_path(conn, base_path)
            if base is None:
                raise HypervisorError(f"base image {base_path} is missing", permanent=True)
            base_info = _volume_info(base)
            vol_xml = vxml.build_volume_xml(name=name, capacity_bytes=base_info.capacity_bytes)
            return _volume_info(self._create_volume(p, pool, name, vol_xml, clone_from=base))

        return self._call(f"copying {base_path} to '{name}' in storage pool '{pool}'", op)

    def delete_volume(self, *, pool: str, name: str) -> None:
        def op(conn: Conn) -> None:
            p = _lookup_pool(conn, pool)
            if p is None or not p.isActive():
                return
            vol = _lookup_volume(p, name)
            if vol is None:
                return
            try:
                vol.delete(0)
            except libvirt.libvirtError as err:
                if _code(err) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise

        self._call(f"deleting volume '{name}' from storage pool '{pool}'", op)

    def list_volumes(self, *, pool: str, prefix: str) -> list[VolumeInfo]:
        def op(conn: Conn) -> list[VolumeInfo]:
            volumes = _require_pool(conn, pool).listAllVolumes(0)
            return _described(volumes, prefix, _volume_info, libvirt.VIR_ERR_NO_STORAGE_VOL)

        return self._call(f"listing volumes of storage pool '{pool}'", op)

    def list_volume_names(self, *, pool: str, prefix: str) -> list[str]:
        # One call: a volume's name comes with the listing, its description is a call each.
        def op(conn: Conn) -> list[str]:
            names = (str(vol.name()) for vol in _require_pool(conn, pool).listAllVolumes(0))
            return sorted(name for name in names if name.startswith(prefix))

        return self._call(f"listing volumes of storage pool '{pool}'", op)

    # --- domains -------------------------------------------------------------------------

    def define_domain(self, spec: DomainSpec) -> DomainInfo:
        if not spec.console_password:
            raise HypervisorError(
                f"desktop '{spec.name}' needs a console password (an empty one disables "
                "console authentication)",
                permanent=True,
            )
        try:
            domain_xml = vxml.build_domain_xml(spec)
        except ValueError as err:
            raise HypervisorError(f"invalid desktop '{spec.name}': {err}", permanent=True) from None

        def existing(conn: Conn) -> DomainInfo | None:
            dom = _lookup_domain(conn, spec.name)
            if dom is None:
                return None
            info = _domain_info(dom)
            if info.desktop_id is not None and info.desktop_id != spec.desktop_id:
                raise HypervisorError(
                    f"domain name '{spec.name}' is already used by desktop {info.desktop_id}",
                    permanent=True,
                )
            return info

        def op(conn: Conn) -> DomainInfo:
            found = existing(conn)
            if found is not None:
                return found
            try:
                dom = conn.defineXML(domain_xml)
            except libvirt.libvirtError:
                found = existing(conn)  # defined concurrently?
                if found is not None:
                    return found
                raise
            return _domain_info(dom)

        return self._call(f"defining desktop '{spec.name}'", op, secrets=(spec.console_password,))

    def start(self, *, name: str) -> None:
        def op(conn: Conn) -> None:
            dom = _require_domain(conn, name)
            state = _domain_state(dom)
            try:
                if state is PowerState.running:
                    return
                if state in (PowerState.paused, PowerState.crashed) and dom.isActive():
                    if state is PowerState.paused and _resume_or_destroy(dom):
                        return
                    if dom.isActive():
                        dom.destroy()
                dom.create()
            except libvirt.libvirtError:
                if _domain_state(dom) is PowerState.running:  # started concurrently
                    return
                raise

        self._call(f"starting desktop '{name}'", op)

    def shutdown(self, *, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout_s)

        def press(conn: Conn) -> bool:
            """Press the power button; False if the domain is already off or gone."""
            dom = _lookup_domain(conn, name)
            if dom is None or not dom.isActive():
                return False
            try:
                state = _domain_state(dom)
                if state is PowerState.crashed:  # it will never react to ACPI
                    dom.destroy()
                    return False
                # A paused guest cannot react to ACPI either.
                if state is PowerState.paused and not _resume_or_destroy(dom):
                    return False
                dom.shutdown()
            except libvirt.libvirtError:
                if not dom.isActive():
                    return False
                raise
            return True

        def is_off(conn: Conn) -> bool:
            dom = _lookup_domain(conn, name)
            return dom is None or not dom.isActive()

        what = f"shutting down desktop '{name}'"
        if not self._call(what, press):
            return
        last_press = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(min(_SHUTDOWN_POLL_S, max(0.0, deadline - time.monotonic())))
            if self._call(what, is_off):
                return
            if time.monotonic() - last_press >= _SHUTDOWN_REPRESS_S:
                # Guests that were still booting may have missed the first press.
                if not self._call(what, press):
                    return
                last_press = time.monotonic()
        log.info("desktop %s ignored ACPI shutdown for %.1f s; forcing it off", name, timeout_s)
        self.destroy(name=name)

    def reboot(self, *, name: str) -> None:
        def op(conn: Conn) -> None:
            dom = _require_domain(conn, name)
            state = _domain_state(dom)
            if state in (PowerState.paused, PowerState.crashed) and dom.isActive():
                if state is PowerState.crashed or not _resume_or_destroy(dom):
                    if dom.isActive():
                        dom.destroy()
            if not dom.isActive():
                dom.create()
                return
            dom.reboot(0)

        self._call(f"rebooting desktop '{name}'", op)

    def migrate_live(
        self, *, name: str, to_uri: str, to_address: str, allow_unsafe: bool = False
    ) -> MigrationStats:
        def op(conn: Conn) -> MigrationStats:
            dom = _require_running(conn, name)
            # SECURE: the display password travels with the domain (a display without
            # one would be open to anyone on the destination's network).
            flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
            moved = vxml.domain_xml_moved(dom.XMLDesc(flags), listen_address=to_address)
            params = _migration_params(moved, to_address)
            check_libvirt_uri(to_uri)  # as every connection's URI: no program, no socket
            destination = libvirt.open(to_uri)
            try:
                try:
                    arrived = dom.migrate3(destination, params, _MIGRATE_FLAGS)
                except libvirt.libvirtError as err:
                    if _code(err) != libvirt.VIR_ERR_MIGRATE_UNSAFE:
                        raise
                    if not allow_unsafe:
                        message = _UNSAFE_REFUSED.format(_msg(err))
                        raise HypervisorError(message, permanent=True) from None
                    unsafe = _MIGRATE_FLAGS | libvirt.VIR_MIGRATE_UNSAFE
                    arrived = dom.migrate3(destination, params, unsafe)
                return _migration_stats(arrived)
            finally:
                destination.close()

        return self._call(f"migrating desktop '{name}' to {to_uri}", op)

    def destroy(self, *, name: str) -> None:
        def op(conn: Conn) -> None:
            dom = _lookup_domain(conn, name)
            if dom is not None:
                _force_off(dom)

        self._call(f"forcing off desktop '{name}'", op)

    def undefine(self, *, name: str) -> None:
        def op(conn: Conn) -> None:
            dom = _lookup_domain(conn, name)
            if dom is None or not _force_off(dom):
                return
            try:
                dom.undefineFlags(_UNDEFINE_FLAGS)
            except libvirt.libvirtError as err:
                code = _code(err)
                if code == libvirt.VIR_ERR_NO_DOMAIN:
                    return  # undefined concurrently
                if code not in (
                    libvirt.VIR_ERR_NO_SUPPORT,
                    libvirt.VIR_ERR_INVALID_ARG,
                    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                ):
                    raise
                dom.undefine()  # a driver without those flags (e.g. the test driver)

        self._call(f"removing desktop '{name}'", op)

    def state(self, *, name: str) -> PowerState:
        def op(conn: Conn) -> PowerState:
            dom = _lookup_domain(conn, name)
            if dom is None:
                return PowerState.missing
            try:
                return _domain_state(dom)
            except libvirt.libvirtError as err:
                if _code(err) == libvirt.VIR_ERR_NO_DOMAIN:
                    return PowerState.missing
                raise

        return self._call(f"reading the state of desktop '{name}'", op)

    def list_domains(self, *, prefix: str) -> list[DomainInfo]:
        def op(conn: Conn) -> list[DomainInfo]:
            domains = conn.listAllDomains(0)
            return _described(domains, prefix, _domain_info, libvirt.VIR_ERR_NO_DOMAIN)

        return self._call("listing desktop domains", op)

    # --- console -------------------------------------------------------------------------

    def console_endpoint(self, *, name: str) -> ConsoleEndpoint:
        def op(conn: Conn) -> ConsoleEndpoint:
            dom = _require_running(conn, name)
            endpoint = vxml.parse_console_endpoint(dom.XMLDesc(0))
            if endpoint is None:
                raise HypervisorError(
                    f"desktop domain '{name}' has no VNC or SPICE display listening",
                    permanent=True,
                )
            return endpoint

        return self._call(f"finding the console of desktop '{name}'", op)

    def set_console_password(self, *, name: str, password: str, valid_for_s: int) -> None:
        if not password:
            raise HypervisorError(
                "an empty console password would disable console authentication",
                permanent=True,
            )
        if valid_for_s <= 0:
            raise HypervisorError(
                "a console password must be valid for at least 1 s", permanent=True
            )

        def op(conn: Conn) -> None:
            dom = _require_running(conn, name)
            valid_to = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=valid_for_s)
            try:
                device_xml = vxml.graphics_password_update_xml(
                    dom.XMLDesc(0), password=password, valid_to=valid_to
                )
            except LookupError:
                raise HypervisorError(
                    f"desktop domain '{name}' has no VNC or SPICE display", permanent=True
                ) from None
            dom.updateDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._call(f"setting the console password of desktop '{name}'", op, secrets=(password,))

    def screenshot(self, *, name: str) -> bytes:
        def op(conn: Conn) -> bytes:
            dom = _require_running(conn, name)
            stream = conn.newStream(0)
            chunks: list[bytes] = []
            try:
                dom.screenshot(stream, 0, 0)
                while True:
                    chunk = stream.recv(_STREAM_CHUNK)
                    if isinstance(chunk, int):  # -2: would block (not on a blocking stream)
                        continue
                    if not chunk:
                        break
                    chunks.append(chunk)
                stream.finish()
            except BaseException:
                try:
                    stream.abort()
                except libvirt.libvirtError:
                    pass
                raise
            return b"".join(chunks)

        raw = self._call(f"taking a screenshot of desktop '{name}'", op)
        try:
            with Image.open(io.BytesIO(raw)) as image:
                out = io.BytesIO()
                image.save(out, format="PNG")
        except (UnidentifiedImageError, OSError) as err:
            raise HypervisorError(
                f"screenshot of desktop '{name}' could not be decoded: {err}", permanent=False
            ) from None
        return out.getvalue()

    # --- host ----------------------------------------------------------------------------

    def kvm_available(self) -> bool:
        cached = _kvm_cache.get(self.uri)
        if cached is None:
            cached = self._detect_kvm()
            _kvm_cache[self.uri] = cached
            log.info("KVM %s on %s", "available" if cached else "not available", self.uri)
        return cached

    def _detect_kvm(self) -> bool:
        def caps(conn: Conn) -> None:
            conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)

        try:
            self._call("reading KVM domain capabilities", caps)
        except HypervisorError as err:
            if not err.permanent:
                raise  # could not ask; do not cache a guess
            return False
        if _is_local_qemu(self.uri):
            return run_kvm_probe()
        return True

    def host_capacity(self, *, pool: str) -> HostCapacity:
        def op(conn: Conn) -> HostCapacity:
            # getInfo(): [model, memory MiB, active CPUs, MHz, NUMA nodes, sockets, cores,
            # threads]; a pool's info(): [state, capacity, allocation, available] in bytes.
            info = conn.getInfo()
            found = _lookup_pool(conn, pool)
            pool_gib = int(found.info()[1]) // 2**30 if found is not None else None
            return HostCapacity(cpus=int(info[2]), memory_mib=int(info[1]), pool_gib=pool_gib)

        try:
            return self._call("reading the host's CPUs, memory and storage pool", op)
        except HypervisorError as err:
            # Asked once, for a person at a form: nothing will retry this call.
            raise HypervisorError(
                err.message.removesuffix(RETRY_NOTE), permanent=err.permanent
            ) from None

    def host_load(self) -> HostLoad:
        def op(conn: Conn) -> HostLoad:
            info = conn.getInfo()
            running = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            busy, total = _node_cpu_counters(conn)
            available, stats_total = _memory_mib(conn)
            return HostLoad(
                cpus=int(info[2]),
                memory_mib=int(info[1]),
                available_memory_mib=available,
                running_guests=len(running),
                cpu_busy_ns=busy,
                cpu_total_ns=total,
                memory_stats_total_mib=stats_total,
            )

        return self._call("reading the host's load", op)

    def domain_stats(self, *, prefix: str) -> list[DomainStats]:
        def op(conn: Conn) -> list[DomainStats]:
            records = conn.getAllDomainStats(_STATS_KINDS, _STATS_RUNNING)
            return [
                domain_stats_from(name=name, uuid=dom.UUIDString(), record=record)
                for dom, record in records
                if (name := dom.name()).startswith(prefix)
            ]

        return self._call("reading the running domains' statistics", op)

    def pool_usage(self, *, pool: str) -> PoolUsage | None:
        def op(conn: Conn) -> PoolUsage | None:
            found = _lookup_pool(conn, pool)
            if found is None:
                return None
            _state, capacity, allocation, available = found.info()
            return PoolUsage(
                capacity_bytes=int(capacity),
                allocation_bytes=int(allocation),
                available_bytes=int(available),
            )

        return self._call(f"reading storage pool {pool}'s usage", op)


# What one bulk statistics call reads of each running domain (one round trip per host).
_STATS_KINDS: Final = (
    libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
_STATS_RUNNING: Final = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING


def _node_cpu_counters(conn: Conn) -> tuple[int | None, int | None]:
    """(busy, total) nanoseconds over all CPUs since boot; (None, None) where unsupported."""
    try:
        stats = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
    except libvirt.libvirtError:
        return None, None
    idle = int(stats.get("idle", 0)) + int(stats.get("iowait", 0))
    busy = int(stats.get("user", 0)) + int(stats.get("kernel", 0))
    return busy, busy + idle


def _memory_mib(conn: Conn) -> tuple[int, int | None]:
    """(available, total) MiB by the kernel's statistics: available is free memory plus
    buffers and page cache (what guests can still get); where the driver has no memory
    statistics (libvirt's test driver), the plain free figure and no total."""
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
    except libvirt.libvirtError:
        return int(conn.getFreeMemory()) // 2**20, None
    kib = sum(int(stats.get(key, 0)) for key in ("free", "buffers", "cached"))
    total = stats.get("total")
    return kib // 1024, int(total) // 1024 if total is not None else None


register_backend(LIBVIRT_SCHEMES, LibvirtHypervisor, uri_check=check_libvirt_uri)
