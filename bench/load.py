"""4. Portal under load: 1,000 users and 5,000 desktops in PostgreSQL (bulk_create), served by
daphne as in the Procfile, loaded by wrk at 50 concurrent connections on loopback. Each
request carries the session cookie of one of 50 employees (5 desktops each), in turn.

Baseline in the same run: a static file (WhiteNoise) through the same daphne, i.e. the
ASGI server and middleware without a view or a query. Served by one daphne process (as
the Procfile does), then by two daphne processes sharing one listening socket (--fd), one
per core, to show what a second worker buys on this machine.

Queries per request are counted in-process (CaptureQueriesContext) for a user with 10, 100
and 1,000 desktops: the employee's dashboard and API list, and the help-desk's list of that
user's desktops (GET /api/desktops/?user=<username>).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import threading
import time
from typing import Any

import psycopg
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bench.common import (
    BENCH,
    PREFIX,
    WORK,
    cpu_s,
    daphne_command,
    free_port,
    log,
    start_server,
    stop_server,
)
from bench.fixtures import make_user, session_key
from vms.hypervisor import domain_name, volume_name
from vms.models import Desktop, DesktopStatus, Host, Template
from vms.roles import EMPLOYEE_GROUP

User = get_user_model()
STATUSES = [DesktopStatus.RUNNING, DesktopStatus.STOPPED, DesktopStatus.RUNNING,
            DesktopStatus.STOPPED, DesktopStatus.RUNNING]  # fmt: skip
CLIENTS = 50
ENDPOINTS = {"static": "/static/css/portal.css", "dashboard": "/", "api_list": "/api/desktops/"}


def _desktops(owner: Any, host: Host, template: Template, count: int, start: int = 0) -> list:
    made = []
    for i in range(count):
        desktop = Desktop(
            owner=owner,
            template=template,
            host=host,
            name=f"Desktop {start + i}",
            status=STATUSES[(start + i) % len(STATUSES)],
            vcpus=1,
            memory_mib=128,
            disk_gib=1,
            progress="ready",
        )
        desktop.domain_name = domain_name(PREFIX, str(desktop.pk))
        desktop.volume_name = volume_name(PREFIX, str(desktop.pk))
        made.append(desktop)
    return made


def populate(host: Host, template: Template, users: int, desktops: int) -> list[Any]:
    """`users` employees with `desktops` desktops in all, round robin; returns the users."""
    made = User.objects.bulk_create(
        [User(username=f"load-{i:04d}", password="!") for i in range(users)]  # noqa: S106, batch_size=1000
    )
    group = Group.objects.get(name=EMPLOYEE_GROUP)
    Membership = User.groups.through
    Membership.objects.bulk_create(
        [Membership(user_id=u.pk, group_id=group.pk) for u in made], batch_size=1000
    )
    rows = []
    owners = itertools.cycle(made)
    for i in range(desktops):
        rows += _desktops(next(owners), host, template, 1, start=i)
    Desktop.objects.bulk_create(rows, batch_size=1000)
    return made


def count_queries(host: Host, template: Template, sizes: tuple[int, ...]) -> dict[str, Any]:
    helper = make_user("load-helpdesk", helpdesk=True)
    counts: dict[str, dict[int, int]] = {"dashboard": {}, "api_list": {}, "helpdesk_list": {}}
    for size in sizes:
        with transaction.atomic():
            owner = make_user(f"queries-{size}")
            Desktop.objects.bulk_create(_desktops(owner, host, template, size), batch_size=1000)
            employee = Client(HTTP_HOST="127.0.0.1")
            employee.force_login(owner)
            desk = Client(HTTP_HOST="127.0.0.1")
            desk.force_login(helper)
            for name, client, url in (
                ("dashboard", employee, "/"),
                ("api_list", employee, "/api/desktops/"),
                ("helpdesk_list", desk, f"/api/desktops/?user={owner.username}"),
            ):
                client.get(url)  # warm (content types, permissions caches)
                with CaptureQueriesContext(connection) as captured:
                    response = client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}")
                if name != "dashboard" and len(response.json()) != size:
                    raise RuntimeError(f"{url} listed {len(response.json())} of {size}")
                counts[name][size] = len(captured)
            transaction.set_rollback(True)
    return {
        "sizes": list(sizes),
        "counts": counts,
        "constant": {name: len(set(c.values())) == 1 for name, c in counts.items()},
    }


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class ConnectionSampler(threading.Thread):
    """The largest number of PostgreSQL connections to the bench database, sampled 4x/s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.refused = False  # the sampler itself found no free connection slot
        self.stop = threading.Event()

    def run(self) -> None:
        db = connection.settings_dict
        try:
            with psycopg.connect(
                host=db["HOST"] or "127.0.0.1", port=int(db["PORT"] or 5432), user=db["USER"],
                password=db["PASSWORD"] or None, dbname=db["NAME"], autocommit=True,
            ) as conn:  # fmt: skip
                while not self.stop.wait(0.25):
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db["NAME"],)
                    ).fetchone()
                    self.peak = max(self.peak, int(row[0]) - 1 if row else 0)
        except psycopg.Error:
            self.refused = True


def _wrk(
    url: str, seconds: float, sessions_file: str, pids: tuple[int, ...] = ()
) -> dict[str, Any]:
    """One wrk run; with `pids`, also the CPU the servers and the whole machine spent and
    the peak number of database connections."""
    sampler = ConnectionSampler()
    sampler.start()
    server_before = [cpu_s(pid) for pid in pids]
    busy_before = _machine_busy_s()
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "10s", "--latency",
         "-s", str(BENCH / "wrk_sessions.lua"), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
        env=dict(os.environ, DPB_SESSIONS=sessions_file),
    )  # fmt: skip
    busy = _machine_busy_s() - busy_before
    sampler.stop.set()
    sampler.join()
    per_server = [cpu_s(pid) - before for pid, before in zip(pids, server_before, strict=True)]
    line = next(x for x in done.stdout.splitlines() if x.startswith("DPB-JSON "))
    data: dict[str, Any] = json.loads(line.removeprefix("DPB-JSON "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["p50_ms"] = data["p50_us"] / 1000
    data["p99_ms"] = data["p99_us"] / 1000
    data["peak_db_connections"] = sampler.peak
    data["db_sampler_refused"] = sampler.refused
    if pids and data["requests"]:
        data["daphne_cpu_ms_per_request"] = sum(per_server) * 1000 / data["requests"]
        data["machine_cpu_ms_per_request"] = busy * 1000 / data["requests"]
        data["daphne_cpu_s"] = [round(cpu, 2) for cpu in per_server]
    return data


def _serve(processes: int) -> tuple[list[Any], str, list[socket.socket]]:
    if processes == 1:
        port = free_port()
        server = start_server(daphne_command(port), name="load-daphne-1", port=port)
        return [server], f"http://127.0.0.1:{port}", []
    # One listening socket per process on the same port (SO_REUSEPORT), so that the kernel
    # spreads connections evenly; with one shared socket the first process to wake up
    # accepts nearly all of wrk's 50 keep-alive connections.
    listeners: list[socket.socket] = []
    port = 0
    for _ in range(processes):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        port = listener.getsockname()[1]
        listener.listen(1024)
        listener.set_inheritable(True)
        listeners.append(listener)
    servers = [
        start_server(
            daphne_command(fd=sock.fileno()),
            name=f"load-daphne-{processes}-{i}",
            pass_fds=(sock.fileno(),),
        )
        for i, sock in enumerate(listeners)
    ]
    return servers, f"http://127.0.0.1:{port}", listeners


def _ready(base: str, servers: list[Any], key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for server in servers:
            if server.process.poll() is not None:
                raise RuntimeError(f"daphne exited; see {server.logfile}")
        try:
            if requests.get(f"{base}/", cookies={"sessionid": key}, timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError("daphne did not serve the dashboard within 60 s")
    # Every process imports Django on its own: let all of them finish before measuring.
    time.sleep(2 * len(servers))


def run(*, template: Template, host: Host, quick: bool) -> dict[str, Any]:
    users, desktops = (100, 500) if quick else (1000, 5000)
    # The quick run's samples are long enough that a loaded machine still completes some
    # requests (beside the suite one daphne served the dashboard at 1 request/s: a 2 s
    # sample could have come out 0, which the suite reads as a broken server).
    seconds = 5 if quick else 10
    started = time.perf_counter()
    made = populate(host, template, users, desktops)
    populate_s = time.perf_counter() - started
    log(f"load: {users} users and {desktops} desktops in {populate_s:.1f} s")
    keys = [session_key(user) for user in made[:CLIENTS]]
    WORK.mkdir(parents=True, exist_ok=True)
    sessions_file = WORK / "wrk-sessions.txt"
    sessions_file.write_text("\n".join(keys) + "\n")
    for key in keys:  # every session really is logged in (wrk counts a 302 as success)
        client = Client(HTTP_HOST="127.0.0.1")
        client.cookies["sessionid"] = key
        if client.get("/").status_code != 200:
            raise RuntimeError("a bench session is not logged in")
    log("load: queries per request")
    queries = count_queries(host, template, (10, 100) if quick else (10, 100, 1000))
    served: dict[str, Any] = {}
    for processes in (1, 2):
        servers, base, listeners = _serve(processes)
        try:
            _ready(base, servers, keys[0])
            runs: dict[str, Any] = {}
            for name, path in ENDPOINTS.items():
                log(f"load: wrk {CLIENTS} connections, {processes} daphne, {name}")
                _wrk(base + path, 1, str(sessions_file))  # warm-up
                pids = tuple(server.pid for server in servers)
                runs[name] = _wrk(base + path, seconds, str(sessions_file), pids)
            for name in ("dashboard", "api_list"):
                runs[name]["rps_ratio_to_static"] = runs[name]["rps"] / runs["static"]["rps"]
            logs = "".join(server.logfile.read_text(errors="replace") for server in servers)
            runs["server_errors_logged"] = logs.count("ERROR django.request")
            runs["db_connections_refused"] = logs.count("remaining connection slots")
            served[f"daphne_x{processes}"] = runs
        finally:
            # daphne ignores SIGTERM for 20 s when it arrives right after a burst; let it settle
            time.sleep(3)
            for server in servers:
                stop_server(server)
            for listener in listeners:
                listener.close()
    return {
        "users": users,
        "desktops": desktops,
        "clients": CLIENTS,
        "seconds": seconds,
        "populate_s": populate_s,
        "queries": queries,
        "served": served,
        "db_conn_max_age": connection.settings_dict.get("CONN_MAX_AGE"),
    }
