"""1. Clone: a linked clone through the hypervisor layer (a qcow2 overlay created with the
libvirt storage API) against a full copy (libvirt's createXMLFrom, i.e. qemu-img convert),
for base images of 1 GiB and 10 GiB. Median time and bytes written (allocated blocks of the
new volume, st_blocks * 512).

The bases are qcow2 images in the bench pool with real (non-zero) data: the 1 GiB base is
fully written; the 10 GiB base holds 1 GiB of data in 16 extents spread over the disk (a
golden image is never full). In --quick the data is 64 MiB in each base.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.common import LIBVIRT_URI, POOL, POOL_PATH, PREFIX, log, median
from vms.hypervisor import get_hypervisor
from vms.hypervisor.libvirt_backend import LibvirtHypervisor
from vms.models import Host, Template

GIB = 1024**3
MIB = 1024**2


def _make_base(path: str, *, size: int, data: int, extents: int) -> None:
    """A qcow2 of virtual `size` with `data` bytes of a non-zero pattern in `extents` runs."""
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)], check=True)
    per_extent = data // extents
    stride = size // extents
    chunk = 64 * MIB
    commands = []
    for extent in range(extents):
        start = extent * stride
        written = 0
        while written < per_extent:
            length = min(chunk, per_extent - written)
            commands += ["-c", f"write -P 0x5a {start + written} {length}"]
            written += length
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, path], check=True, capture_output=True)


def _blocks(path: str) -> int:
    return os.stat(path).st_blocks * 512


def run(*, template: Template, host: Host, quick: bool) -> dict[str, Any]:
    hv = get_hypervisor(LIBVIRT_URI)
    assert isinstance(hv, LibvirtHypervisor)  # full_copy_volume is the libvirt backend's own
    hv.ensure_pool(name=POOL, path=POOL_PATH)
    linked_reps, full_reps = (5, 1) if quick else (15, 5)
    data = 64 * MIB if quick else 1 * GIB
    bases = {
        "1GiB": {"size": 1 * GIB, "extents": 1},
        "10GiB": {"size": 10 * GIB, "extents": 16},
    }
    results: dict[str, Any] = {"data_bytes_per_base": data, "bases": {}}
    try:
        for label, spec in bases.items():
            base_name = f"{PREFIX}clone-base-{label.lower()}.qcow2"
            base_path = os.path.join(POOL_PATH, base_name)
            log(f"clone: writing the {label} base ({data // MIB} MiB of data)")
            _make_base(base_path, size=spec["size"], data=data, extents=spec["extents"])
            os.sync()  # the base's dirty pages must not be written back during the timings
            entry: dict[str, Any] = {"base_allocated_bytes": _blocks(base_path)}
            linked_ms, linked_bytes = [], []
            for rep in range(linked_reps + 1):
                name = f"{PREFIX}clone-linked-{label.lower()}-{rep}.qcow2"
                started = time.perf_counter()
                vol = hv.clone_volume(
                    pool=POOL, name=name, base_path=base_path, capacity_bytes=spec["size"]
                )
                elapsed = (time.perf_counter() - started) * 1000
                written = _blocks(vol.path)
                hv.delete_volume(pool=POOL, name=name)
                if rep:  # the first one warms libvirt's pool lookups up
                    linked_ms.append(elapsed)
                    linked_bytes.append(written)
            full_ms, full_bytes = [], []
            for rep in range(full_reps):
                log(f"clone: full copy {rep + 1}/{full_reps} of the {label} base")
                name = f"{PREFIX}clone-full-{label.lower()}-{rep}.qcow2"
                started = time.perf_counter()
                vol = hv.full_copy_volume(pool=POOL, name=name, base_path=base_path)
                elapsed = (time.perf_counter() - started) * 1000
                full_ms.append(elapsed)
                full_bytes.append(_blocks(vol.path))
                hv.delete_volume(pool=POOL, name=name)
                os.sync()  # nor the deleted copy's
            entry.update(
                linked_ms=linked_ms,
                linked_median_ms=median(linked_ms),
                linked_bytes_median=median(linked_bytes),
                full_ms=full_ms,
                full_median_ms=median(full_ms),
                full_bytes_median=median(full_bytes),
            )
            entry["ratio_linked_to_full"] = entry["linked_median_ms"] / entry["full_median_ms"]
            results["bases"][label] = entry
    finally:
        for label in bases:
            name = f"{PREFIX}clone-base-{label.lower()}.qcow2"
            hv.delete_volume(pool=POOL, name=name)
            if os.path.exists(os.path.join(POOL_PATH, name)):  # never seen by libvirt
                os.unlink(os.path.join(POOL_PATH, name))
    small, large = results["bases"]["1GiB"], results["bases"]["10GiB"]
    results["linked_time_ratio_10g_to_1g"] = large["linked_median_ms"] / small["linked_median_ms"]
    results["linked_bytes_ratio_10g_to_1g"] = (
        large["linked_bytes_median"] / small["linked_bytes_median"]
    )
    return results
