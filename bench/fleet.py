"""The fleet bench: two real lab hosts (scripts/lab-host), the portal's own services and
Celery worker and beat, real TCG guests.

    .venv/bin/python -m bench.fleet            # ~2 min on the 2-core dev machine
    .venv/bin/python -m bench.fleet --quick    # ~1.5 min

Figures, each with a baseline from the same run:
- live migration through the portal (API action -> worker -> libvirt) against the same move
  straight through the hypervisor layer, alternating, and QEMU's own downtime figure;
- draining a host of N running desktops against N single migrations one after the other;
- host loss (its libvirtd, virtlockd and QEMUs killed) to every desktop running again, with
  the production defaults (heartbeat 10 s, down after 30 s), against the goal of 60 s;
- placement spread of 20 launches over the two hosts.

Root only (lab hosts are network namespaces). Uses the bench's database, Redis database,
prefix and pool (bench/settings.py); lab hosts `bencha` and `benchb`, removed at the end.
Traffic stays on loopback and inside the lab hosts' namespaces.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

HOSTS = ("bencha", "benchb")
LAB_HOST = ROOT / "scripts" / "lab-host"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from bench.common import libvirt_cleanup, log, machine_info, write_json

    results: dict[str, Any] = {"machine": machine_info("qemu (TCG)"), "quick": args.quick}
    try:
        with fleet() as (hosts, template, admin, employee):
            results |= measure(hosts, template, admin, employee, quick=args.quick)
    finally:
        libvirt_cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latest.json", results)
    (args.out / "latest.md").write_text(table(results))
    log(f"fleet bench: results in {args.out}")
    print(table(results))
    return 0


@contextmanager
def fleet() -> Iterator[tuple[list[Any], Any, Any, Any]]:
    """Two lab hosts registered in the bench's portal, a worker for their queues and the
    portal queue, and Celery beat (the heartbeat rounds) as in production."""
    import redis
    from django.conf import settings

    from bench.common import PYTHON, WORK, running
    from bench.fixtures import bench_template, database_prepare, local_host, make_user
    from vms.hypervisor.kvmprobe import run_kvm_probe
    from vms.models import Host
    from vms.services.fleet.membership import host_register

    database_prepare()
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    local = local_host()
    template = bench_template()  # its base lives in the pool directory every host shares
    Host.objects.filter(pk=local.pk).update(enabled=False)
    virt_type = "kvm" if run_kvm_probe() else "qemu"
    hosts = []
    try:
        for name in HOSTS:
            uri = _lab("up", name)
            address = uri.split("//")[1].split("/")[0]
            host = host_register(name=name, uri=uri, console_address=address,
                                 virt_type=virt_type)  # fmt: skip
            # Desktops' vCPUs are mostly idle: 8 per CPU, as VDI hosts are run (a lab host
            # has this machine's 2 CPUs, and 20 launches need 10 vCPUs on each).
            Host.objects.filter(pk=host.pk).update(cpu_overcommit=8.0)
            host.refresh_from_db()
            hosts.append(host)
        admin = make_user("fleet-admin")
        admin.is_staff = admin.is_superuser = True  # type: ignore[attr-defined]
        admin.save()  # type: ignore[attr-defined]
        employee = make_user("fleet-employee")
        queues = ",".join(["portal", *(host.queue_name for host in hosts)])
        worker = [PYTHON, "-m", "celery", "-A", "portal", "worker", "-Q", queues, "-c", "4",
                  "--without-gossip", "--without-mingle", "-n", "fleet-bench@%h",
                  "--loglevel", "INFO"]  # fmt: skip
        beat = [PYTHON, "-m", "celery", "-A", "portal", "beat", "--loglevel", "INFO",
                "-s", str(WORK / "fleet-beat-schedule")]  # fmt: skip
        with running(worker, name="fleet-worker"), running(beat, name="fleet-beat"):
            yield hosts, template, admin, employee
    finally:
        for name in reversed(HOSTS):
            _lab("down", name)


def _lab(command: str, name: str) -> str:
    done = subprocess.run([str(LAB_HOST), command, name], capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"lab-host {command} {name}: {done.stderr.strip()}")
    return done.stdout.strip()


def measure(hosts: list[Any], template: Any, admin: Any, employee: Any, *, quick: bool) -> dict:
    from bench.common import log

    a, b = hosts
    repeats, drained, lost = (2, 2, 2) if quick else (4, 5, 3)
    out: dict[str, Any] = {}
    log("fleet: placement spread of 20 launches")
    out["placement"] = placement_spread(hosts, template, employee)
    log(f"fleet: live migration, {repeats} through the portal and {repeats} direct")
    out["migration"] = migrations(a, b, template, admin, employee, repeats=repeats)
    log(f"fleet: draining a host of {drained} running desktops")
    out["drain"] = drain(a, b, template, admin, employee, count=drained)
    log(f"fleet: losing a host with {lost} running desktops")
    out["recovery"] = recovery(a, b, template, employee, count=lost)
    out["drain"]["baseline_s"] = out["migration"]["portal_median_s"] * drained
    out["drain"]["ratio"] = out["drain"]["total_s"] / out["drain"]["baseline_s"]
    return out


def placement_spread(hosts: list[Any], template: Any, employee: Any) -> dict[str, Any]:
    """20 launches at once, before any worker could boot them: where placement put them
    (their rows and queued work are then removed, nothing booted)."""
    from vms.models import Desktop, Quota
    from vms.services.desktops.requests import desktop_create

    Quota.objects.update_or_create(user=employee, defaults={"max_desktops": 100,
        "max_vcpus": 100, "max_memory_mib": 100_000, "max_disk_gib": 1000})  # fmt: skip
    started = time.monotonic()
    made = [desktop_create(user=employee, template_id=template.pk) for _ in range(20)]
    took = time.monotonic() - started
    counts = {host.name: sum(1 for d in made if d.host_id == host.pk) for host in hosts}
    _remove_unbooted([d.pk for d in made])
    Desktop.objects.filter(pk__in=[d.pk for d in made]).update(status="deleted")
    return {"launches": 20, "per_host": counts, "seconds_for_20": took,
            "goal": {name: 10 for name in counts}}  # fmt: skip


def _remove_unbooted(ids: list[Any]) -> None:
    """Wait until the worker has dealt with the placement launches, then delete them."""
    from vms.models import Desktop
    from vms.services.desktops.requests import desktop_act

    _until(lambda: not Desktop.objects.filter(pk__in=ids, status__in=["provisioning",
           "starting"]).exists(), timeout=600)  # fmt: skip
    for desktop in Desktop.objects.filter(pk__in=ids).exclude(status="deleted"):
        desktop_act(actor=desktop.owner, desktop=desktop, action="delete")
    _until(lambda: Desktop.objects.filter(pk__in=ids, status="deleted").count() == len(ids),
           timeout=300)  # fmt: skip


def launch_on(host: Any, others: list[Any], template: Any, employee: Any) -> Any:
    from vms.models import Desktop, Host
    from vms.services.desktops.requests import desktop_create

    Host.objects.filter(pk__in=[o.pk for o in others]).update(enabled=False)
    try:
        desktop = desktop_create(user=employee, template_id=template.pk)
    finally:
        Host.objects.filter(pk__in=[o.pk for o in others]).update(enabled=True)
    _until(lambda: Desktop.objects.filter(pk=desktop.pk, status="running").exists(), timeout=300)
    return Desktop.objects.select_related("host").get(pk=desktop.pk)


def migrations(a: Any, b: Any, template: Any, admin: Any, employee: Any, *, repeats: int) -> dict:
    """Alternating: through the portal a -> b, then straight through the hypervisor layer
    b -> a (the same guest, the same hosts, no services, tasks or database)."""
    from bench.common import median
    from vms.hypervisor import get_hypervisor
    from vms.models import AuditEvent, Desktop
    from vms.services.desktops.requests import desktop_act

    desktop = launch_on(a, [b], template, employee)
    portal, direct, downtimes, direct_downtimes = [], [], [], []
    for _ in range(repeats):
        started = time.monotonic()
        desktop_act(actor=admin, desktop=desktop, action="migrate", params={"host": b.name})
        _until(lambda: Desktop.objects.filter(pk=desktop.pk, status="running", host=b).exists(),
               timeout=300)  # fmt: skip
        portal.append(time.monotonic() - started)
        event = AuditEvent.objects.filter(action="desktop.migrated", desktop_id=desktop.pk)
        downtimes.append(event.latest("pk").detail.get("downtime_ms"))
        started = time.monotonic()
        stats = get_hypervisor(b.uri).migrate_live(name=desktop.domain_name, to_uri=a.uri,
                                                   to_address=a.console_address,
                                                   allow_unsafe=True)  # fmt: skip
        direct.append(time.monotonic() - started)
        direct_downtimes.append(stats.downtime_ms)
        Desktop.objects.filter(pk=desktop.pk).update(host=a)  # the direct move, recorded
        desktop.refresh_from_db()
    _delete([desktop])
    return {"portal_s": portal, "direct_s": direct, "portal_median_s": median(portal),
            "direct_median_s": median(direct), "ratio": median(portal) / median(direct),
            "downtime_ms": downtimes, "direct_downtime_ms": direct_downtimes,
            "downtime_goal_ms": 300}  # fmt: skip


def drain(a: Any, b: Any, template: Any, admin: Any, employee: Any, *, count: int) -> dict:
    from vms.models import Desktop, Host
    from vms.services.fleet.membership import host_maintenance_set

    desktops = [launch_on(a, [b], template, employee) for _ in range(count)]
    ids = [d.pk for d in desktops]
    started = time.monotonic()
    host_maintenance_set(actor=admin, host=Host.objects.get(pk=a.pk), enabled=True)
    _until(lambda: Desktop.objects.filter(pk__in=ids, status="running", host=b).count() == count,
           timeout=600)  # fmt: skip
    took = time.monotonic() - started
    host_maintenance_set(actor=admin, host=Host.objects.get(pk=a.pk), enabled=False)
    return {"desktops": count, "total_s": took, "ids": [str(i) for i in ids]}


def recovery(a: Any, b: Any, template: Any, employee: Any, *, count: int) -> dict:
    """Desktops running on b; b's daemons and QEMUs killed; until all run on a."""
    from django.conf import settings

    from vms.models import AuditEvent, Desktop, Host

    on_b = list(Desktop.objects.filter(host=b, status="running"))  # the drained ones
    while len(on_b) < count:
        on_b.append(launch_on(b, [a], template, employee))
    ids = [d.pk for d in on_b]
    count = len(ids)
    pids = subprocess.run(["ip", "netns", "pids", f"dplab-{b.name}"], capture_output=True,
                          text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run(["kill", "-KILL", *pids], check=True)
    killed = time.monotonic()
    _until(lambda: Desktop.objects.filter(pk__in=ids, status="running", host=a).count() == count,
           timeout=300)  # fmt: skip
    took = time.monotonic() - killed
    down = AuditEvent.objects.filter(action="host.down", detail__name=b.name).latest("pk")
    _lab("up", b.name)  # it comes back, and rejoins
    _until(lambda: Host.objects.get(pk=b.pk).status == "up", timeout=120)
    return {"desktops": count, "loss_to_all_running_s": took, "goal_s": 60,
            "marked_down_after_silence_s": down.detail.get("silent_s"),
            "heartbeat_interval_s": settings.HOST_HEARTBEAT_INTERVAL_S,
            "down_after_s": settings.HOST_DOWN_AFTER_S}  # fmt: skip


def _delete(desktops: list[Any]) -> None:
    from vms.models import Desktop
    from vms.services.desktops.requests import desktop_act

    for desktop in desktops:
        desktop.refresh_from_db()
        desktop_act(actor=desktop.owner, desktop=desktop, action="delete")
    ids = [d.pk for d in desktops]
    _until(lambda: Desktop.objects.filter(pk__in=ids, status="deleted").count() == len(ids),
           timeout=300)  # fmt: skip


def _until(done: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout:.0f} s")
        time.sleep(0.25)


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    mig, dr, rec, pl = (results[k] for k in ("migration", "drain", "recovery", "placement"))
    rows = [
        ("Live migration, portal (median s)", f"{mig['portal_median_s']:.2f}",
         f"{mig['direct_median_s']:.2f} (hypervisor layer alone)", f"{mig['ratio']:.2f}"),
        ("Guest downtime, portal moves (ms)", ", ".join(map(str, mig["downtime_ms"])),
         f"goal ≤ {mig['downtime_goal_ms']}", ""),
        ("Guest downtime, direct moves (ms)", ", ".join(map(str, mig["direct_downtime_ms"])),
         "", ""),
        (f"Drain of {dr['desktops']} running desktops (s)", f"{dr['total_s']:.1f}",
         f"{dr['baseline_s']:.1f} ({dr['desktops']} single migrations)", f"{dr['ratio']:.2f}"),
        (f"Host loss to {rec['desktops']} desktops running again (s)",
         f"{rec['loss_to_all_running_s']:.1f}", f"goal ≤ {rec['goal_s']}",
         f"{rec['loss_to_all_running_s'] / rec['goal_s']:.2f}"),
        ("Placement of 20 launches", str(pl["per_host"]), str(pl["goal"]), ""),
    ]  # fmt: skip
    lines = [
        f"# Fleet bench ({'quick' if results['quick'] else 'full'})", "",
        f"{m['date']}, commit {m['commit']}: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, "
        f"{m['virtualization']}, {m['qemu']}, {m['libvirt']}.", "",
        f"Heartbeat every {rec['heartbeat_interval_s']} s, down after {rec['down_after_s']} s "
        f"(the defaults); the lost host was marked down after {rec['marked_down_after_silence_s']}"
        " s of silence.", "",
        "| figure | value | baseline or goal | ratio |", "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows), "",
    ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
