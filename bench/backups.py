"""The snapshots and backups bench: the portal's worker functions on a real TCG guest.

    .venv/bin/python -m bench.backups            # ~2 min on the 2-core dev machine
    .venv/bin/python -m bench.backups --quick    # fewer repeats

Figures, each with a baseline from the same run:
- snapshot create and revert, of a running desktop (with its memory) and of a stopped one,
  through the services and worker functions (vms.services.disks.snapshot_work);
- backups of a disk holding 1 GiB of data: a full backup, then an incremental one after
  10 MiB changed, time and bytes written (the incremental/full ratio of bytes is the
  figure; 10 MiB / 1 GiB ~ 0.01 is ideal); quiescent (a stopped desktop, QEMU started
  paused, verified by a compare with the disk) and live (a running guest, its 10 MiB
  written by `dd` in the guest through its serial shell); baseline: `qemu-img convert` of
  the same disk (what copying the whole disk costs on this machine);
- restore of the incremental chain into a new desktop's volume (flatten, check, import),
  and in place; baseline: the same `qemu-img convert`.

Uses the bench's database, Redis database, prefix and pool (bench/settings.py) and a backup
folder of its own; everything it creates is removed at the end. No network: loopback only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
os.environ.setdefault("BACKUP_DIR", "/var/lib/desktop-portal/bench-backups")

MIB = 1024**2
GIB = 1024**3
DATA_AT = 1 * GIB  # the 1 GiB of data sits in the second GiB, beyond the guest's partitions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backups")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from django.conf import settings

    from bench.common import libvirt_cleanup, log, machine_info, write_json

    results: dict[str, Any] = {"machine": machine_info("qemu (TCG)"), "quick": args.quick}
    try:
        results |= measure(quick=args.quick)
    finally:
        libvirt_cleanup()
        shutil.rmtree(settings.BACKUP_DIR, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latest.json", results)
    (args.out / "latest.md").write_text(table(results))
    log(f"backups bench: results in {args.out}")
    print(table(results))
    return 0


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = work()
    return time.perf_counter() - started, value


def measure(*, quick: bool) -> dict[str, Any]:
    import redis
    from django.conf import settings

    from bench.common import log
    from bench.fixtures import bench_template, database_prepare, local_host, make_user
    from vms.models import Template

    database_prepare()
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    host = local_host()
    template = bench_template()
    Template.objects.filter(pk=template.pk).update(disk_gib=2, snapshot_limit=50, backup_keep=50)
    template.refresh_from_db()
    owner = make_user("backup-bench")
    desktop = _desktop(owner, host, template)
    out: dict[str, Any] = {}
    repeats = 2 if quick else 4
    log(f"backups: snapshot create and revert, {repeats} of each kind")
    out["snapshots"] = snapshots(desktop, owner, repeats=repeats)
    log("backups: 1 GiB of data, full then incremental after 10 MiB changed (stopped)")
    out["quiescent"] = quiescent_backups(desktop, owner)
    log("backups: the same, live (a running guest writes its 10 MiB)")
    out["live"] = live_backups(desktop, owner)
    log("backups: restore to a new desktop's volume and in place")
    out["restore"] = restores(desktop, owner, out["quiescent"]["incremental_id"])
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # the tasks the services queued
    return out


def _desktop(owner: Any, host: Any, template: Any) -> Any:
    from vms.hypervisor.naming import domain_name, volume_name
    from vms.models import Desktop
    from vms.services.desktops.lifecycle import desktop_provision
    from vms.settings_access import name_prefix

    desktop = Desktop(
        owner=owner,
        template=template,
        host=host,
        vcpus=1,
        memory_mib=128,
        disk_gib=2,
        name="backup bench",
        base_image_path=template.base_image_path,
    )
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    desktop.save(force_insert=True)
    desktop_provision(desktop_id=desktop.pk)
    desktop.refresh_from_db()
    assert desktop.status == "running", desktop.last_error
    return desktop


def _stop(desktop: Any) -> None:
    from vms.hypervisor import get_hypervisor
    from vms.services.desktops import transitions

    get_hypervisor(desktop.host.uri).shutdown(name=desktop.domain_name, timeout_s=30)
    desktop.refresh_from_db()
    if desktop.status != "stopped":
        transitions.compare_and_set(desktop_id=desktop.pk, old=desktop.status, new="stopped")
    desktop.refresh_from_db()


def _start(desktop: Any) -> None:
    from vms.hypervisor import get_hypervisor
    from vms.services.desktops import transitions

    get_hypervisor(desktop.host.uri).start(name=desktop.domain_name)
    transitions.compare_and_set(desktop_id=desktop.pk, old="stopped", new="running")
    desktop.refresh_from_db()


def _path(desktop: Any) -> str:
    from vms.hypervisor import get_hypervisor

    info = get_hypervisor(desktop.host.uri).volume_info(
        pool=desktop.host.storage_pool, name=desktop.volume_name
    )
    assert info is not None
    return info.path


def snapshots(desktop: Any, owner: Any, *, repeats: int) -> dict[str, Any]:
    from vms.models import Snapshot
    from vms.services.disks import snapshot_work, snapshots

    def one(kind: str) -> dict[str, float]:
        desktop.refresh_from_db()
        snapshot = snapshots.snapshot_create(actor=owner, desktop=desktop, name=kind)
        create_s, _ = timed(lambda: snapshot_work.desktop_snapshot_take(desktop_id=desktop.pk))
        row = Snapshot.objects.get(pk=snapshot.pk)
        assert row.status == "ready", row.last_error
        desktop.refresh_from_db()
        snapshots.snapshot_revert(actor=owner, desktop=desktop, snapshot_id=row.pk)
        revert_s, _ = timed(lambda: snapshot_work.desktop_snapshot_revert(desktop_id=desktop.pk))
        desktop.refresh_from_db()
        snapshots.snapshot_delete(actor=owner, desktop=desktop, snapshot_id=row.pk)
        snapshot_work.desktop_snapshot_remove(desktop_id=desktop.pk)
        return {"create_s": create_s, "revert_s": revert_s, "size_bytes": row.size_bytes}

    running = [one("running") for _ in range(repeats)]
    _stop(desktop)
    stopped = [one("stopped") for _ in range(repeats)]
    return {"running": _medians(running), "stopped": _medians(stopped)}


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    from bench.common import median

    return {key: median(row[key] for row in rows) for key in rows[0]}


def _backup(desktop: Any, owner: Any) -> Any:
    from vms.models import Backup
    from vms.services.disks import backup_work, backups

    desktop.refresh_from_db()
    backup = backups.backup_request(actor=owner, desktop=desktop)
    seconds, _ = timed(lambda: backup_work.desktop_backup(desktop_id=desktop.pk))
    row = Backup.objects.get(pk=backup.pk)
    assert row.status == "ready", row.last_error
    return seconds, row


def _qemu_io(path: str, *commands: str) -> None:
    args = [arg for command in commands for arg in ("-c", command)]
    subprocess.run(["qemu-io", "-f", "qcow2", *args, path], check=True, capture_output=True)


def _convert_baseline(path: str) -> tuple[float, int]:
    from vms.services.disks.backups import backup_root

    target = backup_root() / "baseline.qcow2"
    seconds, _ = timed(
        lambda: subprocess.run(
            ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", path, str(target)],
            check=True,
        )
    )
    written = target.stat().st_blocks * 512
    target.unlink()
    return seconds, written


def quiescent_backups(desktop: Any, owner: Any) -> dict[str, Any]:
    path = _path(desktop)
    # 1 GiB of data (random: nothing compresses or deduplicates it away).
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -s /dev/urandom {DATA_AT} 1G", path],
        check=False,
        capture_output=True,
    )
    if _allocated_mib(path) < 1000:  # qemu-io -s needs a regular file: write a pattern instead
        _qemu_io(path, *(f"write -P {n + 1} {DATA_AT + n * 64 * MIB} 64M" for n in range(16)))
    os.sync()
    baseline_s, baseline_bytes = _convert_baseline(path)
    full_s, full = _backup(desktop, owner)
    # 10 MiB changed, in 10 places across the data.
    _qemu_io(path, *(f"write -P 200 {DATA_AT + n * 100 * MIB} 1M" for n in range(10)))
    os.sync()
    inc_s, inc = _backup(desktop, owner)
    return {
        "disk_allocated_mib": _allocated_mib(path),
        "full_s": full_s,
        "full_bytes": full.bytes_written,
        "incremental_s": inc_s,
        "incremental_bytes": inc.bytes_written,
        "bytes_ratio": inc.bytes_written / full.bytes_written,
        "baseline_convert_s": baseline_s,
        "baseline_convert_bytes": baseline_bytes,
        "incremental_id": str(inc.pk),
    }


def _allocated_mib(path: str) -> int:
    return os.stat(path).st_blocks * 512 // MIB


def live_backups(desktop: Any, owner: Any) -> dict[str, Any]:
    from tests.guestshell import guest_shell
    from vms.models import Backup

    _start(desktop)
    with guest_shell(desktop.host.uri, desktop.domain_name) as shell:
        shell.run("sync")
    # Cut the chain, so that this first live backup is a full one (the portal itself
    # starts a new chain only when the last checkpoint is gone, e.g. after a revert).
    Backup.objects.filter(desktop=desktop).update(checkpoint="")
    full_s, full = _backup(desktop, owner)
    assert full.parent_id is None
    with guest_shell(desktop.host.uri, desktop.domain_name) as shell:
        shell.run("dd if=/dev/urandom of=/root/ten bs=1M count=10 2>/dev/null && sync", timeout=120)
    inc_s, inc = _backup(desktop, owner)
    _stop(desktop)
    return {
        "full_s": full_s,
        "full_bytes": full.bytes_written,
        "incremental_s": inc_s,
        "incremental_bytes": inc.bytes_written,
        "bytes_ratio": inc.bytes_written / full.bytes_written,
    }


def restores(desktop: Any, owner: Any, backup_id: str) -> dict[str, Any]:
    from vms.models import Backup
    from vms.services.disks import backup_work, backups

    backup = Backup.objects.get(pk=backup_id)
    new = backups.backup_restore(actor=owner, backup=backup, target="new")
    new.refresh_from_db()
    new_s, path = timed(lambda: backup_work.restored_volume_path(new, new.host))
    baseline_s, _ = _convert_baseline(str(backups.backup_path(backup)))
    desktop.refresh_from_db()
    backups.backup_restore(actor=owner, backup=backup, target="in_place")
    in_place_s, _ = timed(lambda: backup_work.desktop_restore(desktop_id=desktop.pk))
    desktop.refresh_from_db()
    assert desktop.last_error == "" and desktop.restored_from_id == backup.pk, desktop.last_error
    return {
        "new_volume_s": new_s,
        "in_place_s": in_place_s,
        "baseline_convert_s": baseline_s,
        "restored_allocated_mib": _allocated_mib(path),
        "in_place_allocated_mib": _allocated_mib(_path(desktop)),
    }


def table(results: dict[str, Any]) -> str:
    machine = results["machine"]
    snap, quiet, live, rest = (
        results[key] for key in ("snapshots", "quiescent", "live", "restore")
    )
    mib = lambda n: f"{n / MIB:.1f} MiB"  # noqa: E731
    rows = [
        (
            "Snapshot create, running (with 128 MiB RAM) (s)",
            f"{snap['running']['create_s']:.2f}",
            "",
            "",
        ),
        ("Snapshot revert, running (s)", f"{snap['running']['revert_s']:.2f}", "", ""),
        ("Snapshot size, running (measured)", mib(snap["running"]["size_bytes"]), "", ""),
        ("Snapshot create, stopped (s)", f"{snap['stopped']['create_s']:.2f}", "", ""),
        ("Snapshot revert, stopped (s)", f"{snap['stopped']['revert_s']:.2f}", "", ""),
        (
            "Full backup, 1 GiB of data, stopped (s)",
            f"{quiet['full_s']:.2f}",
            f"{quiet['baseline_convert_s']:.2f} (qemu-img convert)",
            f"{quiet['full_s'] / quiet['baseline_convert_s']:.2f}",
        ),
        (
            "Full backup, bytes written",
            mib(quiet["full_bytes"]),
            mib(quiet["baseline_convert_bytes"]),
            "",
        ),
        ("Incremental after 10 MiB changed, stopped (s)", f"{quiet['incremental_s']:.2f}", "", ""),
        ("Incremental, bytes written", mib(quiet["incremental_bytes"]), "10.0 MiB changed", ""),
        (
            "**Incremental / full bytes, stopped**",
            f"**{quiet['bytes_ratio']:.4f}**",
            "ideal ~0.0098",
            "",
        ),
        ("Full backup, live (s)", f"{live['full_s']:.2f}", "", ""),
        (
            "Incremental after 10 MiB written in the guest, live (s)",
            f"{live['incremental_s']:.2f}",
            "",
            "",
        ),
        (
            "Incremental / full bytes, live",
            f"{live['bytes_ratio']:.4f}",
            f"{mib(live['incremental_bytes'])} of {mib(live['full_bytes'])}",
            "",
        ),
        (
            "Restore to a new desktop's volume (s)",
            f"{rest['new_volume_s']:.2f}",
            f"{rest['baseline_convert_s']:.2f} (qemu-img convert of the chain)",
            f"{rest['new_volume_s'] / rest['baseline_convert_s']:.2f}",
        ),
        ("Restore in place (s)", f"{rest['in_place_s']:.2f}", "", ""),
        (
            "Restored disk, allocated (new / in place)",
            f"{rest['restored_allocated_mib']} / {rest['in_place_allocated_mib']} MiB",
            "",
            "",
        ),
    ]
    lines = [
        f"# Snapshots and backups bench{' (quick)' if results['quick'] else ''}",
        "",
        "{date}, commit {commit}: {cpu}, {cores} cores, {virtualization}, {qemu}, "
        "libvirt {libvirt}.".format(**machine),
        "",
        "| figure | value | baseline | ratio |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
