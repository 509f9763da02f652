"""qemu-img on backup files (local paths in BACKUP_DIR): check, compare, link, flatten;
and on a desktop's own volume (a local path in the pool, read-only and shared with a
running QEMU): what its internal snapshots hold.

Always ``-f qcow2`` (never a format probe). Errors become ``HypervisorError`` (permanent:
the same file fails the same way again).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any, Final

from .errors import HypervisorError

__all__ = [
    "SnapshotSpace",
    "image_check",
    "image_compare",
    "image_flatten",
    "image_link",
    "image_rebase_away",
    "image_snapshot_space",
]

_TIMEOUT_S: Final = 3600


def _run(args: list[str], *, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"qemu-img {args[0]} could not run: {exc}", permanent=True) from exc
    if done.returncode not in ok:
        lines = done.stderr.strip().splitlines() or ["no message"]
        raise HypervisorError(f"qemu-img {args[0]} failed: {lines[-1]}", permanent=True)
    return done


def image_check(path: str) -> None:
    """``qemu-img check`` of every file of the chain: no corruption, no errors."""
    done = _run(["check", "-f", "qcow2", "--output=json", path], ok=(0, 2, 3))
    report = json.loads(done.stdout or "{}")
    if report.get("corruptions") or report.get("check-errors") or done.returncode == 2:
        raise HypervisorError(f"qemu-img check found damage in {path}: {report}", permanent=True)


def image_chain(path: str) -> list[dict[str, object]]:
    """``qemu-img info --backing-chain`` of ``path``, newest first."""
    done = _run(["info", "-f", "qcow2", "--backing-chain", "-U", "--output=json", path])
    chain: list[dict[str, object]] = json.loads(done.stdout)
    return chain


def image_compare(a: str, b: str) -> bool:
    """Whether two images (each read through its backing chain) hold the same data."""
    return _run(["compare", "-U", "-f", "qcow2", "-F", "qcow2", a, b], ok=(0, 1)).returncode == 0


def image_link(path: str, *, parent: str) -> None:
    """Make ``path`` (an incremental backup: only changed clusters) name ``parent`` as its
    backing file, relative to its own folder; metadata only."""
    relative = os.path.relpath(parent, os.path.dirname(path))
    _run(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", relative, path])


def image_rebase_away(path: str, *, new_parent: str | None) -> None:
    """Copy into ``path`` what its backing file gives it, so that it rests on
    ``new_parent`` instead (None: standalone); the data it reads stays the same."""
    if new_parent is None:
        _run(["rebase", "-f", "qcow2", "-b", "", path])
        return
    relative = os.path.relpath(new_parent, os.path.dirname(path))
    _run(["rebase", "-f", "qcow2", "-F", "qcow2", "-b", relative, path])


def image_flatten(source: str, target: str) -> None:
    """A standalone qcow2 ``target`` with everything ``source``'s chain reads."""
    _run(["convert", "-f", "qcow2", "-O", "qcow2", source, target])


@dataclass(frozen=True)
class SnapshotSpace:
    """What the internal snapshots of one qcow2 file hold, measured from the file.

    ``total_bytes`` = ``actual_bytes`` (the file's allocation on the host) minus
    ``active_bytes`` (the host clusters the guest's disk maps now) minus ``metadata_bytes``
    (the tables any qcow2 of this shape needs with no snapshot); 0 when the file holds no
    internal snapshot. ``vm_state_bytes``: each snapshot's saved memory by name, in whole
    clusters (the file stores it so).
    """

    actual_bytes: int
    active_bytes: int
    metadata_bytes: int
    total_bytes: int
    vm_state_bytes: dict[str, int]


def image_snapshot_space(path: str) -> SnapshotSpace:
    """Measure the space the internal snapshots of the qcow2 at ``path`` hold.

    ``qemu-img info`` gives the file's allocation, cluster size and snapshots; ``qemu-img
    map`` gives the clusters the active layer maps inside the guest's disk (depth 0 of
    the chain, present, with a host offset). ``qemu-img check``'s allocated-clusters is
    not used: on a running guest it still counted the memory just saved by a snapshot
    (QEMU had not yet written back the active table that drops it), while the map, which
    stops at the disk's size, did not. Both read with ``-U``; a running desktop's figure
    is what QEMU has flushed (a guest's sync), and the next measure catches up."""
    info = _json(["info", "-f", "qcow2", "-U", "--output=json", path])
    extents = _json(["map", "-f", "qcow2", "-U", "--output=json", path])
    try:
        return _space(info, extents)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise HypervisorError(f"qemu-img gave an unexpected answer for {path}: {exc!r}",
                              permanent=True) from exc  # fmt: skip


def _json(args: list[str]) -> Any:
    try:
        return json.loads(_run(args).stdout)
    except ValueError as exc:
        raise HypervisorError(f"qemu-img {args[0]} printed no JSON: {exc}", permanent=True) from exc


def _space(info: dict[str, Any], extents: list[dict[str, Any]]) -> SnapshotSpace:
    cluster = int(info["cluster-size"])
    actual = int(info["actual-size"])
    # The active layer's own entries ("present" false: allocated in no layer at all).
    mine = [e for e in extents if e["depth"] == 0 and e.get("present", True)]
    active = sum(-(-int(e["length"]) // cluster) * cluster for e in mine if "offset" in e)
    metadata = _metadata_bytes(info, mine, cluster=cluster, actual=actual)
    vm_state = {
        str(s["name"]): -(-int(s["vm-state-size"]) // cluster) * cluster
        for s in info.get("snapshots", [])
    }
    total = max(actual - active - metadata, 0) if vm_state else 0
    return SnapshotSpace(actual, active, metadata, total, vm_state)


def _metadata_bytes(
    info: dict[str, Any], mine: list[dict[str, Any]], *, cluster: int, actual: int
) -> int:
    """The tables a qcow2 with this active layer and no snapshot holds (qcow2's layout,
    docs/interop/qcow2.txt): the header, the L1 table, the L2 tables that map the active
    layer's entries, the refcount table and its blocks, and the persistent dirty bitmaps
    of backups' checkpoints. The refcount blocks (for the whole file) and the bitmaps (as
    if every granule were dirty) are upper bounds: the snapshots are charged a few
    clusters less, not more. About 5 clusters (320 KiB) on a 1 GiB desktop."""
    data = info["format-specific"]["data"]
    virtual = int(info["virtual-size"])
    entry = 16 if data.get("extended-l2") else 8
    l2_span = cluster // entry * cluster  # guest bytes one L2 table maps
    l2_tables = {
        index
        for e in mine
        for index in range(int(e["start"]) // l2_span,
                           (int(e["start"]) + int(e["length"]) - 1) // l2_span + 1)
    }  # fmt: skip
    l1 = _clusters(-(-virtual // l2_span) * 8, cluster)
    per_block = cluster * 8 // int(data.get("refcount-bits", 16))  # clusters one block counts
    blocks = -(-_clusters(actual, cluster) // per_block)
    refcounts = blocks + _clusters(blocks * 8, cluster)
    bitmaps = data.get("bitmaps", [])
    # Each bitmap: its table and one bit per granule; and their directory.
    bitmap = sum(1 + _clusters(-(-virtual // (int(b["granularity"]) * 8)), cluster)
                 for b in bitmaps) + (1 if bitmaps else 0)  # fmt: skip
    return (1 + l1 + len(l2_tables) + refcounts + bitmap) * cluster


def _clusters(size: int, cluster: int) -> int:
    return max(-(-size // cluster), 1)
