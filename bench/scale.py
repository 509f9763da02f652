"""Scale simulation of the control plane: up to 100 hosts and 10,000 desktops on one machine.

    .venv/bin/python -m bench.scale          # full grid, ~10 min -> bench/results/scale/
    .venv/bin/python -m bench.scale --quick  # small grid, ~10 s -> bench/results/scale-quick/

What is real and what is simulated:
- **Simulated: the hosts.** Each host is libvirt's own test driver (`test:///<node.xml>`), one
  node description per host written by the bench: CPUs, memory, a storage pool holding the
  host's desktop volumes, and one domain per desktop on that host, named with the portal's
  prefix (running, or shut off for the stopped ones). The portal drives them through the real
  `LibvirtHypervisor` (the registry picks it for `test` URIs), so every libvirt call the
  portal makes is made, but it is answered in-process: no RPC, no network, no QEMU. Time spent
  in libvirt here is a lower bound of a real host's.
- **Real: PostgreSQL** (the bench's own database, rows made with bulk_create), **Redis** (the
  Celery broker and the Channels layer), the services, tasks, admin pages and API views, and
  **the Celery routing**: launches and actions are sent through `vms.services.core.queue` to the
  broker, and the bench reads each `host.<name>` queue back from Redis.

Measured at each size of the grid (hosts x desktops), each operation repeated, the order of
the operations reversed every other round (median and min-max reported): one host's
reconcile pass, `reconcile_all_hosts`, `heartbeat_all_hosts`, placement (`host_choose`
alone, and a whole `desktop_create`), the admin's host list and `GET /api/hosts/` (Django's
test Client, as a superuser). SQL statements and the rows they return are counted for each
(tests/sqlcount.py). Growth is fitted as the exponent k of time ~ size^k (least squares in
log-log) along each series: hosts varying at a fixed number of desktops, and desktops
varying at a fixed number of hosts.

Keeps to itself: BENCH_DATABASE_URL (made anew), BENCH_REDIS_URL (flushed at the end); node
files under a temporary folder; no real libvirtd is touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Forced, as bench/run.py does: the bench empties its database, never a caller's.
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.common import log, machine_info, write_json  # noqa: E402
from tests import simfleet  # noqa: E402
from tests.sqlcount import counting_sql  # noqa: E402
from vms import tasks  # noqa: E402
from vms.hypervisor import get_hypervisor  # noqa: E402
from vms.hypervisor.libvirt_backend import LibvirtHypervisor  # noqa: E402
from vms.models import Desktop, Host, HostStatus, Template  # noqa: E402
from vms.roles import EMPLOYEE_GROUP  # noqa: E402
from vms.services.core.queue import enqueue_desktop_task  # noqa: E402
from vms.services.demo import setup_roles  # noqa: E402
from vms.services.desktops.actions import ACTIONS  # noqa: E402
from vms.services.desktops.requests import desktop_create  # noqa: E402
from vms.services.fleet import heartbeat, recovery  # noqa: E402
from vms.services.fleet.placement import host_choose  # noqa: E402
from vms.services.fleet.reconcile import reconcile_host  # noqa: E402
from vms.settings_access import name_prefix  # noqa: E402

User = get_user_model()
FULL_HOSTS = (10, 25, 50, 100)  # at FULL_DESKTOPS[-1] desktops
FULL_DESKTOPS = (1_000, 2_500, 5_000, 10_000)  # at FULL_HOSTS[-1] hosts
QUICK_HOSTS = (4, 8)
QUICK_DESKTOPS = (200, 400)
# A shared pool puts hosts x desktops volumes in the node files: smaller fleets.
FULL_SHARED = ((10, 1_000), (20, 2_000), (30, 3_000))
QUICK_SHARED = ((2, 100), (4, 200))
OPERATIONS = ("reconcile_one", "reconcile_all", "heartbeat_round", "heartbeat_hosts",
              "host_choose", "desktop_create", "admin_hosts", "api_hosts")  # fmt: skip


@dataclass
class Fleet:
    hosts: list[Host]
    desktops: int
    template: Template
    admin: Any
    folder: Path


# --- the simulated fleet -----------------------------------------------------------------------


def database_reset() -> None:
    """Make the bench database anew and migrate it (bench.fixtures)."""
    from bench.fixtures import database_prepare

    database_prepare()


def fleet_build(*, hosts: int, desktops: int, root: Path) -> Fleet:
    """An emptied database, then `hosts` test-driver hosts and `desktops` desktops spread
    round robin over them (tests/simfleet.py), and the admin who reads the pages."""
    call_command("flush", verbosity=0, interactive=False)
    setup_roles()
    folder = root / f"h{hosts}-d{desktops}"
    built = simfleet.fleet_build(hosts=hosts, desktops=desktops, folder=folder)
    for host in built.hosts:
        assert isinstance(get_hypervisor(host.uri), LibvirtHypervisor), host.uri
    admin = User.objects.create_superuser("scale-admin", password=None)
    return Fleet(hosts=built.hosts, desktops=desktops, template=built.template, admin=admin,
                 folder=folder)  # fmt: skip


def fleet_check(fleet: Fleet) -> dict[str, int]:
    """A first reconcile pass over the fleet (it also opens each host's connection, which
    loads its node file); it must find nothing to change: rows and domains agree."""
    started = time.perf_counter()
    results = tasks.reconcile_all_hosts()
    elapsed = time.perf_counter() - started
    domains = sum(
        len(get_hypervisor(h.uri).list_domains(prefix=name_prefix())) for h in fleet.hosts
    )
    if domains != fleet.desktops or any("unreachable" in r for r in results.values()):
        raise RuntimeError(f"fleet not as built: {domains} domains; {results}")
    fixes = sum(report.count(" -> ") for report in results.values())
    if fixes:
        raise RuntimeError(f"rows and domains disagree: {fixes} fixes on the first pass")
    return {"domains": domains, "first_pass_fixes": fixes, "first_pass_ms": round(elapsed * 1000)}


# --- the operations measured ---------------------------------------------------------------------


class Placer:
    """Fresh employees for the launches (each has the default quota of 2 desktops)."""

    def __init__(self, prefix: str = "placer") -> None:
        self.prefix = prefix
        self.count = 0
        self.group = Group.objects.get(name=EMPLOYEE_GROUP)

    def user(self) -> Any:
        self.count += 1
        user = User.objects.create(username=f"{self.prefix}-{self.count:05d}", password="!")  # noqa: S106
        user.groups.add(self.group)
        return user


def operations(fleet: Fleet, placer: Placer, client: Client) -> dict[str, Callable[[], object]]:
    host = fleet.hosts[0]

    def reconcile_one() -> None:
        reconcile_host(host=host)

    def heartbeat_hosts() -> None:
        for each in fleet.hosts:
            if not heartbeat.host_heartbeat(host=each):
                raise RuntimeError(f"host {each.name} failed its heartbeat")

    def choose() -> None:
        with transaction.atomic():
            host_choose(template=fleet.template)

    def create() -> None:
        desktop_create(user=placer.user(), template_id=fleet.template.pk)

    def page(url: str) -> Callable[[], None]:
        def get() -> None:
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")

        return get

    return {
        "reconcile_one": reconcile_one,
        "reconcile_all": tasks.reconcile_all_hosts,
        # The beat's round: one heartbeat task sent to each host's queue (real Redis), then
        # the silent hosts marked down.
        "heartbeat_round": tasks.heartbeat_all_hosts,
        # What the host workers then do, one host after the other here (in parallel on a
        # fleet, one per host worker).
        "heartbeat_hosts": heartbeat_hosts,
        "host_choose": choose,
        "desktop_create": create,
        "admin_hosts": page("/admin/vms/host/"),
        "api_hosts": page("/api/hosts/"),
    }


def _before(name: str, fleet: Fleet) -> None:
    """Untimed: what the hosts' workers would have done. No worker consumes the simulated
    hosts' queues, so without this every host would be silent for HOST_DOWN_AFTER_S
    after a while, and the beat's round would mark them all down and start recovering
    them: each host is recorded as having answered the last round."""
    if name == "heartbeat_round":
        Host.objects.filter(pk__in=[h.pk for h in fleet.hosts]).update(
            status=HostStatus.UP, last_heartbeat_at=timezone.now()
        )


def _after(name: str, fleet: Fleet) -> None:
    """Untimed: the one figure the test driver cannot give. A node file has no NUMA cells,
    so the driver reports 0 bytes of free memory and placement would find every host full
    after a heartbeat; the bench writes what a host with NODE_MEMORY_KIB would report
    instead (its memory less its running desktops')."""
    if name != "heartbeat_hosts":
        return
    for host in fleet.hosts:
        running = Desktop.objects.filter(host=host, status="running").count()
        free = simfleet.NODE_MEMORY_KIB // 1024 - running * 256
        Host.objects.filter(pk=host.pk).update(load_available_memory_mib=free)


def measure(fleet: Fleet, *, repeats: int) -> dict[str, Any]:
    """Each operation once to warm up (counted: statements and rows), then `repeats` timed
    runs, the order of the operations reversed every other round."""
    placer = Placer()
    client = Client(HTTP_HOST="localhost")  # bench.settings: ALLOWED_HOSTS
    client.force_login(fleet.admin)
    ops = operations(fleet, placer, client)
    out: dict[str, Any] = {}
    for name, op in ops.items():
        _before(name, fleet)
        with counting_sql() as count:
            op()
        _after(name, fleet)
        out[name] = {"statements": count.statements, "rows": count.rows, "times_ms": []}
    for round_ in range(repeats):
        order = list(ops) if round_ % 2 == 0 else list(reversed(ops))
        for name in order:
            _before(name, fleet)
            started = time.perf_counter()
            ops[name]()
            out[name]["times_ms"].append((time.perf_counter() - started) * 1000)
            _after(name, fleet)
    for figures in out.values():
        times = figures["times_ms"]
        figures |= {"median_ms": statistics.median(times), "min_ms": min(times),
                    "max_ms": max(times)}  # fmt: skip
        figures["times_ms"] = [round(t, 2) for t in times]
    out["desktop_create"]["launched"] = placer.count
    return out


# --- the Celery routing --------------------------------------------------------------------------


def routing(fleet: Fleet, *, sends: int) -> dict[str, Any]:
    """Send `sends` start tasks for desktops spread over the hosts through the services'
    queue (a real Redis broker; no worker consumes them), then read every `host.<name>`
    queue back: each message must be there, on its desktop's host's queue, and nowhere else."""
    import redis

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queues = [h.queue_name for h in fleet.hosts]
    broker.delete(*queues)
    tasks.heartbeat_all_hosts()  # one host_heartbeat(host id) on each host's queue
    heartbeats_misrouted = 0
    for host in fleet.hosts:
        sent = [json.loads(raw)["headers"] for raw in broker.lrange(host.queue_name, 0, -1)]
        if [(h["task"], h["argsrepr"]) for h in sent] != [
            ("vms.tasks.host_heartbeat", f"[{host.pk}]")
        ]:
            heartbeats_misrouted += 1
    broker.delete(*queues)
    picked = list(Desktop.objects.select_related("host").order_by("?")[:sends])
    started = time.perf_counter()
    with transaction.atomic():
        for desktop in picked:
            enqueue_desktop_task(ACTIONS["start"], desktop=desktop)
    elapsed = time.perf_counter() - started
    expected: dict[str, set[str]] = {}
    for desktop in picked:
        expected.setdefault(desktop.host.queue_name, set()).add(str(desktop.pk))
    found: dict[str, set[str]] = {}
    tasks_seen = set()
    sizes = []
    for queue in queues:
        for raw in broker.lrange(queue, 0, -1):
            sizes.append(len(raw))
            message = json.loads(raw)
            tasks_seen.add(message["headers"]["task"])
            found.setdefault(queue, set()).add(message["headers"]["argsrepr"].strip("[]()',\""))
    broker.delete(*queues)
    misrouted = sum(len(found.get(q, set()) ^ ids) for q, ids in expected.items())
    return {
        "sends": len(picked),
        "queues_used": len(expected),
        "total_ms": round(elapsed * 1000, 1),
        "per_send_ms": round(elapsed * 1000 / max(len(picked), 1), 3),
        "misrouted_or_missing": misrouted,
        "heartbeat_queues_wrong": heartbeats_misrouted,
        "message_bytes": round(statistics.fmean(sizes)) if sizes else 0,
        "tasks": sorted(tasks_seen),
    }


def redis_ops(fleet: Fleet, *, launches: int) -> dict[str, Any]:
    """Redis commands and memory per launch and per queued action, counted on a private
    redis-server on loopback (INFO commandstats of the shared one also counts other people's
    work): the portal's broker writes and Channels layer point there for this section.
    No page is open, so each group send finds its group empty (one command per group)."""
    import redis
    from channels.layers import channel_layers
    from channels_redis.core import RedisChannelLayer

    from bench.common import free_port
    from portal.celery import app as celery_app

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    saved_layer = channel_layers.backends.get("default")
    saved_broker = celery_app.conf.broker_write_url
    try:
        _wait_for_redis(client)
        channel_layers.backends["default"] = RedisChannelLayer(hosts=[url])
        celery_app.conf.broker_write_url = url
        placer = Placer(prefix="redis")
        before = _redis_snapshot(client)
        for _ in range(launches):
            desktop_create(user=placer.user(), template_id=fleet.template.pk)
        middle = _redis_snapshot(client)
        with transaction.atomic():
            for desktop in Desktop.objects.select_related("host")[:launches]:
                enqueue_desktop_task(ACTIONS["start"], desktop=desktop)
        after = _redis_snapshot(client)
    finally:
        channel_layers.backends["default"] = saved_layer
        celery_app.conf.broker_write_url = saved_broker
        server.terminate()
        server.wait(timeout=10)
    return {
        "launches": launches,
        "per_launch": _redis_delta(before, middle, launches),
        "per_queued_action": _redis_delta(middle, after, launches),
    }


def _wait_for_redis(client: Any) -> None:
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _redis_snapshot(client: Any) -> dict[str, Any]:
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    calls.pop("info", None)  # the snapshots' own
    return {"calls": calls, "memory": client.info("memory")["used_memory"],
            "connections": client.info("stats")["total_connections_received"]}  # fmt: skip


def _redis_delta(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
    commands = {k: round((v - a["calls"].get(k, 0)) / n, 2) for k, v in b["calls"].items()}
    commands = {k: v for k, v in sorted(commands.items()) if v}
    return {
        "commands": round(sum(commands.values()), 2),
        "by_command": commands,
        "connections": round((b["connections"] - a["connections"]) / n, 2),
        "memory_bytes": round((b["memory"] - a["memory"]) / n),
    }


def libvirt_rpc(fleet: Fleet, *, calls: int) -> dict[str, Any]:
    """What one libvirt call costs on the test driver (in-process) and on the machine's real
    libvirtd (qemu:///system, a local socket: a real remote host adds its network round
    trip): `state()` of a domain that does not exist (one lookup), and `list_domains()`
    (one listing plus two calls per domain). Read-only; nothing is defined."""
    from vms.hypervisor import HypervisorError

    out: dict[str, Any] = {}
    for label, uri in (("test_driver", fleet.hosts[0].uri), ("libvirtd_local", "qemu:///system")):
        hypervisor = get_hypervisor(uri)
        try:
            hypervisor.state(name=f"{name_prefix()}scale-absent")
        except HypervisorError as exc:
            out[label] = {"unavailable": exc.message}
            continue
        started = time.perf_counter()
        for _ in range(calls):
            hypervisor.state(name=f"{name_prefix()}scale-absent")
        per_call = (time.perf_counter() - started) * 1000 / calls
        listed = []
        for _ in range(5):
            started = time.perf_counter()
            domains = hypervisor.list_domains(prefix="")
            listed.append((time.perf_counter() - started) * 1000)
        out[label] = {"state_call_ms": round(per_call, 4), "domains": len(domains),
                      "list_domains_ms": round(statistics.median(listed), 3)}  # fmt: skip
    return out


def shared_pool(root: Path, *, sizes: tuple[tuple[int, int], ...], repeats: int) -> list[Any]:
    """Reconcile over all hosts when the pool directory is shared (every host lists every
    desktop's volume, as on the lab hosts or NFS): hosts x desktops volumes are listed."""
    runs = []
    for hosts, desktops in sizes:
        call_command("flush", verbosity=0, interactive=False)
        setup_roles()
        folder = root / f"shared-h{hosts}-d{desktops}"
        simfleet.fleet_build(hosts=hosts, desktops=desktops, folder=folder, shared_pool=True)
        tasks.reconcile_all_hosts()  # opens the connections (loads the node files)
        with counting_sql() as count:
            tasks.reconcile_all_hosts()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            tasks.reconcile_all_hosts()
            times.append((time.perf_counter() - started) * 1000)
        runs.append({"hosts": hosts, "desktops": desktops, "volumes_listed": hosts * desktops,
                     "statements": count.statements, "rows": count.rows,
                     "median_ms": statistics.median(times), "min_ms": min(times),
                     "max_ms": max(times)})  # fmt: skip
        log(f"  shared pool, {hosts} hosts, {desktops} desktops: {runs[-1]['median_ms']:.0f} ms")
    return runs


def launch_storm(fleet: Fleet, *, launchers: int, seconds: float) -> dict[str, Any]:
    """`launchers` threads launching desktops (desktop_create, each for a fresh employee)
    as fast as they can for `seconds`: placement locks every host row, so launches queue."""
    import threading

    from django.db import connection

    # Fresh employees made beforehand: only the launches are timed.
    users = User.objects.bulk_create(
        User(username=f"storm{launchers}-{i:05d}", password="!")  # noqa: S106
        for i in range(launchers * 400)
    )
    Group.objects.get(name=EMPLOYEE_GROUP).user_set.add(*users)
    lock = threading.Lock()
    done: list[float] = []
    deadline = time.monotonic() + seconds

    def run() -> None:
        try:
            while time.monotonic() < deadline:
                with lock:
                    user = users.pop()
                started = time.perf_counter()
                desktop_create(user=user, template_id=fleet.template.pk)
                with lock:
                    done.append((time.perf_counter() - started) * 1000)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(launchers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    from bench.common import percentile

    return {
        "launchers": launchers,
        "launches": len(done),
        "per_second": round(len(done) / elapsed, 1),
        "p50_ms": round(percentile(done, 50), 1),
        "p99_ms": round(percentile(done, 99), 1),
    }


def console_recheck(fleet: Fleet, *, calls: int) -> dict[str, Any]:
    """What each open console costs the database and Redis between frames: every relay
    re-checks each of its sessions every CONSOLE_RECHECK_S (`console_session_keep`: may the
    user still see the desktop, does it run; then the lease is renewed in Redis)."""
    from vms.models import ConsoleSession
    from vms.services.consoles.sessions import console_session_keep

    desktop = Desktop.objects.filter(status="running").select_related("owner").first()
    assert desktop is not None
    session = ConsoleSession.objects.create(desktop=desktop, user=desktop.owner, mode="view")
    with counting_sql() as count:
        kept = console_session_keep(session_id=session.pk, relay="channels")
    assert kept is None, kept
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        console_session_keep(session_id=session.pk, relay="channels")
        times.append((time.perf_counter() - started) * 1000)
    return {"statements": count.statements, "rows": count.rows, "redis_commands": 1,
            "median_ms": round(statistics.median(times), 3),
            "recheck_s": float(settings.CONSOLE_RECHECK_S)}  # fmt: skip


def thumbnails_one(fleet: Fleet, media: Path) -> dict[str, Any]:
    """One host's thumbnail round (`thumbnails_refresh`), once: a screenshot of each running
    desktop through libvirt, resized and stored. The test driver's screenshot is a small
    fixed picture, so this is a lower bound of a real desktop's."""
    from vms.services.desktops.thumbnails import thumbnails_refresh

    settings.MEDIA_ROOT = str(media)
    started = time.perf_counter()
    with counting_sql() as count:
        stored = thumbnails_refresh(host=fleet.hosts[0])
    elapsed = (time.perf_counter() - started) * 1000
    return {"stored": stored, "ms": round(elapsed, 1), "statements": count.statements,
            "per_desktop_ms": round(elapsed / max(stored, 1), 2)}  # fmt: skip


def recovery_one(fleet: Fleet) -> dict[str, Any]:
    """One recovery pass over a host marked down (`host_recovery_start`), once: each of its
    desktops is aimed at another host (running ones get a recover task on the target's
    queue, stopped ones are re-homed). Run last on a fleet: it moves desktops."""
    host = fleet.hosts[-1]
    Host.objects.filter(pk=host.pk).update(status=HostStatus.DOWN)
    host.refresh_from_db()
    on_host = Desktop.objects.filter(host=host).count()
    started = time.perf_counter()
    with counting_sql() as count:
        done = recovery.host_recovery_start(host=host)
    elapsed = (time.perf_counter() - started) * 1000
    return {"desktops": on_host, "done": done, "ms": round(elapsed, 1),
            "per_desktop_ms": round(elapsed / max(on_host, 1), 2),
            "statements": count.statements, "rows": count.rows}  # fmt: skip


def worker_rounds(fleet: Fleet, *, queues: int, rounds: int) -> dict[str, Any]:
    """One real Celery worker (prefork, -c 2, as the Procfile's) consuming the first
    `queues` hosts' queues: the beat's heartbeat round is sent to every host's queue, and
    the worker runs its hosts' heartbeats against their test-driver hosts. Measured: the
    time from sending a round to the last of its hosts' heartbeats recorded, and the
    worker's memory (its processes' RSS and PSS) once it has run them."""
    import redis

    from bench.common import PYTHON, process_tree, smaps_kib, start_server, stop_server

    hosts = fleet.hosts[:queues]
    command = [
        PYTHON, "-m", "celery", "-A", "portal", "worker", "-c", "2", "--without-gossip",
        "--without-mingle", "-n", "scale@%h", "--loglevel", "WARNING",
        "-Q", ",".join(h.queue_name for h in hosts),
    ]  # fmt: skip
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    all_queues = [h.queue_name for h in fleet.hosts]
    broker.delete(*all_queues)
    server = start_server(command, name="scale-worker")
    latencies = []
    try:
        for round_ in range(rounds + 1):  # the first round also waits for the worker to start
            _before("heartbeat_round", fleet)
            before = {
                h.pk: h.last_heartbeat_at for h in Host.objects.filter(pk__in=[h.pk for h in hosts])
            }
            started = time.perf_counter()
            tasks.heartbeat_all_hosts()
            deadline = time.monotonic() + 120
            while True:
                now = dict(
                    Host.objects.filter(pk__in=before).values_list("pk", "last_heartbeat_at")
                )
                if all(now[pk] != before[pk] for pk in before):
                    break
                if time.monotonic() > deadline or server.process.poll() is not None:
                    raise RuntimeError(
                        f"the worker did not run its heartbeats; see {server.logfile}"
                    )
                time.sleep(0.01)
            if round_:
                latencies.append((time.perf_counter() - started) * 1000)
        memory = [smaps_kib(pid) for pid in process_tree(server.pid)]
    finally:
        stop_server(server)
        broker.delete(*all_queues)
    _after("heartbeat_hosts", fleet)  # the free memory the test driver cannot report
    return {
        "queues": queues,
        "rounds": rounds,
        "round_ms_median": round(statistics.median(latencies), 1),
        "round_ms_max": round(max(latencies), 1),
        "processes": len(memory),
        "rss_kib": sum(m["rss"] for m in memory),
        "pss_kib": sum(m["pss"] for m in memory),
    }


# --- growth --------------------------------------------------------------------------------------


def exponent(points: list[tuple[float, float]]) -> float | None:
    """k in y ~ x^k, least squares in log-log (None when a y is 0)."""
    if len(points) < 2 or any(y <= 0 for _, y in points):
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 2)


def growth(runs: list[dict[str, Any]], hosts_series: tuple[int, ...],
           desktops_series: tuple[int, ...]) -> dict[str, Any]:  # fmt: skip
    by_size = {(r["hosts"], r["desktops"]): r for r in runs}
    fixed_d, fixed_h = desktops_series[-1], hosts_series[-1]
    out: dict[str, Any] = {}
    for op in OPERATIONS:
        row: dict[str, Any] = {}
        for axis, sizes in (("hosts", [(h, fixed_d) for h in hosts_series]),
                            ("desktops", [(fixed_h, d) for d in desktops_series])):  # fmt: skip
            present = [by_size[s] for s in sizes if s in by_size]
            x = (lambda r: r["hosts"]) if axis == "hosts" else (lambda r: r["desktops"])
            for figure in ("median_ms", "statements", "rows"):
                row[f"{figure}_vs_{axis}"] = exponent(
                    [(x(r), r["ops"][op][figure]) for r in present]
                )
        out[op] = row
    return out


# --- the run -------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# Scale simulation ({results['mode']}), {m['date']}, {results['duration_s']} s",
        "",
        f"Command: `{results['command']}`. Portal commit {m['commit']}. Machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, libvirt {m['libvirt']}, "
        f"Python {m['python']}, Django {m['django']}. Load average at start "
        f"{results['loadavg'][0]}, at end {results['loadavg'][1]} (the machine is shared).",
        "",
        "Hosts are libvirt's test driver (in-process, no RPC): libvirt time is a lower "
        "bound. PostgreSQL, Redis and the Celery routing are real. Times: median (min-max) "
        f"of {results['repeats']} runs; statements and rows from one counted run.",
        "",
        "| Hosts | Desktops | Operation | Median ms | Min-max ms | SQL statements | SQL rows |",
        "|---:|---:|---|---:|---|---:|---:|",
    ]
    for run in results["runs"]:
        for op in OPERATIONS:
            f = run["ops"][op]
            lines.append(
                f"| {run['hosts']} | {run['desktops']} | {op} | {f['median_ms']:.1f} | "
                f"{f['min_ms']:.1f}-{f['max_ms']:.1f} | {f['statements']} | {f['rows']} |"
            )
    lines += ["", "## Growth: exponent k of figure ~ size^k (1 = linear, 0 = flat)", "",
              f"Along hosts at {results['series']['desktops'][-1]} desktops, and along desktops "
              f"at {results['series']['hosts'][-1]} hosts.", "",
              "| Operation | time vs hosts | time vs desktops | statements vs hosts | "
              "statements vs desktops | rows vs hosts | rows vs desktops |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for op, g in results["growth"].items():
        lines.append(
            f"| {op} | {g['median_ms_vs_hosts']} | {g['median_ms_vs_desktops']} | "
            f"{g['statements_vs_hosts']} | {g['statements_vs_desktops']} | "
            f"{g['rows_vs_hosts']} | {g['rows_vs_desktops']} |"
        )
    lines += ["", "## Celery routing (real Redis broker, no worker)", ""]
    for run in results["runs"]:
        r = run["routing"]
        lines.append(
            f"- {run['hosts']} hosts, {run['desktops']} desktops: {r['sends']} sends to "
            f"{r['queues_used']} host queues in {r['total_ms']} ms ({r['per_send_ms']} ms "
            f"each, {r['message_bytes']} bytes each in Redis); misrouted or missing: "
            f"{r['misrouted_or_missing']}; tasks {r['tasks']}; hosts whose queue did not hold "
            f"exactly their own heartbeat: {r['heartbeat_queues_wrong']}"
        )
    lines += ["", "## First reconcile pass of each fleet (opens each host's connection)", ""]
    for run in results["runs"]:
        c = run["check"]
        lines.append(
            f"- {run['hosts']} hosts, {run['desktops']} desktops: {c['domains']} domains "
            f"compared, {c['first_pass_fixes']} fixes, {c['first_pass_ms']} ms"
        )
    if "redis" in results:
        r = results["redis"]
        lines += ["", f"## Redis per operation (private redis-server, {r['launches']} each)", ""]
        for what in ("per_launch", "per_queued_action"):
            f = r[what]
            lines.append(
                f"- {what}: {f['commands']} commands {f['by_command']}, "
                f"{f['connections']} new connections, {f['memory_bytes']} bytes kept"
            )
    if "launch_storm" in results:
        lines += ["", "## Launches at once (desktop_create in threads, at the first fleet)", ""]
        for f in results["launch_storm"]:
            lines.append(
                f"- {f['launchers']} launchers: {f['launches']} launches, {f['per_second']}/s, "
                f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms"
            )
    if "shared_pool" in results:
        lines += ["", "## Reconcile of all hosts with a shared pool directory", "",
                  "| Hosts | Desktops | Volumes listed | Median ms | Min-max ms | Statements "
                  "| Rows |",
                  "|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
        for f in results["shared_pool"]:
            lines.append(
                f"| {f['hosts']} | {f['desktops']} | {f['volumes_listed']} | "
                f"{f['median_ms']:.0f} | {f['min_ms']:.0f}-{f['max_ms']:.0f} | "
                f"{f['statements']} | {f['rows']} |"
            )
    lines += ["", "## One host's thumbnail round (once)", ""]
    for run in results["runs"]:
        if "thumbnails_one" in run:
            f = run["thumbnails_one"]
            lines.append(
                f"- {run['hosts']} hosts, {run['desktops']} desktops: {f['stored']} stored in "
                f"{f['ms']} ms ({f['per_desktop_ms']} ms each), {f['statements']} statements"
            )
    lines += ["", "## Recovery pass of one host marked down (once)", ""]
    for run in results["runs"]:
        if "recovery_one" in run:
            f = run["recovery_one"]
            lines.append(
                f"- {run['hosts']} hosts, {run['desktops']} desktops: {f['desktops']} on the "
                f"host, {f['done']} in {f['ms']} ms ({f['per_desktop_ms']} ms each), "
                f"{f['statements']} statements, {f['rows']} rows"
            )
    if "worker" in results:
        f = results["worker"]
        lines += ["", "## One real Celery worker (-c 2) on the host queues", "",
                  f"- consuming {f['queues']} host queues: the beat's heartbeat round to all "
                  f"hosts' queues -> its hosts' heartbeats recorded in {f['round_ms_median']} ms "
                  f"(median of {f['rounds']}, max {f['round_ms_max']}); {f['processes']} "
                  f"processes, RSS {f['rss_kib']} KiB, PSS {f['pss_kib']} KiB"]  # fmt: skip
    if "console_recheck" in results:
        f = results["console_recheck"]
        lines += ["", "## One open console's re-check (every CONSOLE_RECHECK_S)", "",
                  f"- {f['statements']} SQL statements ({f['rows']} rows), "
                  f"{f['redis_commands']} Redis SET, {f['median_ms']} ms median, "
                  f"every {f['recheck_s']} s"]  # fmt: skip
    if "libvirt_rpc" in results:
        lines += ["", "## One libvirt call (through LibvirtHypervisor)", ""]
        for label, f in results["libvirt_rpc"].items():
            lines.append(f"- {label}: {f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    hosts_series = QUICK_HOSTS if args.quick else FULL_HOSTS
    desktops_series = QUICK_DESKTOPS if args.quick else FULL_DESKTOPS
    repeats = args.repeats or (3 if args.quick else 5)
    out = args.out or ROOT / "bench" / "results" / ("scale-quick" if args.quick else "scale")
    sizes = [(h, desktops_series[-1]) for h in hosts_series]
    sizes += [(hosts_series[-1], d) for d in desktops_series[:-1]]
    started = time.time()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.scale"
        + (" --quick" if args.quick else "")
        + (f" --repeats {args.repeats}" if args.repeats else ""),
        "machine": machine_info("libvirt test driver (simulated hosts)"),
        "loadavg": [os.getloadavg()[0]],
        "repeats": repeats,
        "series": {"hosts": hosts_series, "desktops": desktops_series},
        "runs": [],
    }
    database_reset()
    with tempfile.TemporaryDirectory(prefix="scale-nodes-") as tmp:
        for hosts, desktops in sizes:
            log(f"fleet of {hosts} hosts, {desktops} desktops")
            fleet = fleet_build(hosts=hosts, desktops=desktops, root=Path(tmp))
            check = fleet_check(fleet)
            ops = measure(fleet, repeats=repeats)
            log("  " + ", ".join(f"{k} {v['median_ms']:.1f} ms/{v['statements']} q"
                                 for k, v in ops.items()))  # fmt: skip
            results["runs"].append({
                "hosts": hosts, "desktops": desktops, "check": check, "ops": ops,
                "routing": routing(fleet, sends=min(1000, desktops)),
            })  # fmt: skip
            if desktops // hosts <= 100:  # about 80 running desktops on the host, or fewer
                results["runs"][-1]["thumbnails_one"] = thumbnails_one(fleet, Path(tmp) / "media")
                results["runs"][-1]["recovery_one"] = recovery_one(fleet)
            if "redis" not in results:
                results["redis"] = redis_ops(fleet, launches=50 if args.quick else 200)
                results["libvirt_rpc"] = libvirt_rpc(fleet, calls=300)
                results["console_recheck"] = console_recheck(fleet, calls=50)
                results["launch_storm"] = [
                    launch_storm(fleet, launchers=n, seconds=3 if args.quick else 10)
                    for n in (1, 4)
                ]
                results["worker"] = worker_rounds(fleet, queues=3, rounds=5)
        log("shared pool")
        shared = QUICK_SHARED if args.quick else FULL_SHARED
        results["shared_pool"] = shared_pool(Path(tmp), sizes=shared, repeats=3)
    import redis

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    results["loadavg"].append(os.getloadavg()[0])
    results["growth"] = growth(results["runs"], hosts_series, desktops_series)
    results["duration_s"] = round(time.time() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "latest.json", results)
    (out / "latest.md").write_text(markdown(results))
    log(f"done in {results['duration_s']} s: {out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
