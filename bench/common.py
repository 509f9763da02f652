"""Shared pieces of the bench: statistics, server processes, the machine's description,
the bench database and libvirt clean-up."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = ROOT / "var" / "bench"  # logs, echo-node XML, scratch (never committed)
PREFIX = "dpb-"
POOL = "portal-bench"
POOL_PATH = "/var/lib/desktop-portal/bench-pool"
LIBVIRT_URI = "qemu:///system"
PYTHON = sys.executable


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], logfile: Path, timeout=60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {logfile}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}; see {logfile}")


def server_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="bench.settings", PYTHONUNBUFFERED="1")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(extra)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int | None
    logfile: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def server_stacks(server: Server) -> str:
    """Where a portal server waits now: its threads' and asyncio tasks' stacks."""
    from tests.servers import process_stacks  # the bench's runner puts the root on the path

    return process_stacks(server.process, server.logfile)


def start_server(
    command: list[str],
    *,
    name: str,
    port: int | None = None,
    pass_fds: tuple[int, ...] = (),
    **env: str,
) -> Server:
    WORK.mkdir(parents=True, exist_ok=True)
    logfile = WORK / f"{name}.log"
    with open(logfile, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    server = Server(process, port, logfile)
    if port is not None:
        try:
            wait_for_port(port, process, logfile)
        except BaseException:
            stop_server(server)
            raise
    return server


def stop_server(server: Server, timeout: float = 20) -> None:
    """SIGTERM the server's own process group (it was started in a new session)."""
    if server.process.poll() is not None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"{server.logfile.stem} did not stop within {timeout:.0f} s of SIGTERM; killed")
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


@contextmanager
def running(
    command: list[str], *, name: str, port: int | None = None, **env: str
) -> Iterator[Server]:
    server = start_server(command, name=name, port=port, **env)
    try:
        yield server
    finally:
        stop_server(server)


def daphne_command(
    port: int | None = None, app: str = "portal.asgi:application", fd=None
) -> list[str]:
    command = [PYTHON, "-m", "daphne"]
    if fd is not None:
        command += ["--fd", str(fd)]
    else:
        command += ["-b", "127.0.0.1", "-p", str(port)]
    return [*command, app]


def celery_command(name: str) -> list[str]:
    # As in the Procfile's worker, with the long queue too: two prefork processes.
    return [
        PYTHON, "-m", "celery", "-A", "portal", "worker",
        "-Q", "portal,host.local,host.local.long", "-c", "2",
        "--without-gossip", "--without-mingle", "-n", f"{name}@%h", "--loglevel", "WARNING",
    ]  # fmt: skip


# --- memory of processes -----------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def smaps_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and private (USS) memory of a process, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                values[parts[0][:-1]] = int(parts[1])
    return {
        "rss": values.get("Rss", 0),
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    }


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    return [pid, *(p for child in children_of(pid) for p in process_tree(child))]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may contain spaces and parentheses: split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


# --- the machine -------------------------------------------------------------------------------


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_info(virt_type: str) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = _status_meminfo("MemTotal")
    import django

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_release(),
        "virtualization": virt_type,
        "python": platform.python_version(),
        "django": django.get_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "libvirt": _first_line(["virsh", "--version"]),
        "chromium": _first_line(["chromium", "--version"]),
        "wrk": _first_line(["wrk", "--version"]) if shutil.which("wrk") else "missing",
    }


def _commit() -> str:
    """The portal's commit, marked '+changes' when files outside bench/ differ from it."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
         ":(exclude)bench"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return f"{head}+changes" if changed else head


def _status_meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "unknown"
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return match.group(1) if match else "unknown"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


# --- the bench's libvirt objects -----------------------------------------------------------------


def libvirt_cleanup(keep: tuple[str, ...] = ()) -> list[str]:
    """Remove every domain and volume of ours (prefix dpb-) from libvirt and the bench pool,
    except the volumes named in `keep`."""
    from vms.hypervisor import HypervisorError, get_hypervisor

    removed = []
    hv = get_hypervisor(LIBVIRT_URI)
    try:
        for domain in hv.list_domains(prefix=PREFIX):
            hv.undefine(name=domain.name)
            removed.append(domain.name)
        for volume in hv.list_volumes(pool=POOL, prefix=PREFIX):
            if volume.name in keep:
                continue
            hv.delete_volume(pool=POOL, name=volume.name)
            removed.append(volume.name)
    except HypervisorError as exc:
        log(f"clean-up: {exc.message}")
    return removed


def wait_for_quiet_machine(max_wait_s: float = 3600) -> float:
    """Wait while a pytest run is active (the test suite has time limits); return the wait."""
    started = time.monotonic()
    announced = False
    mine = {os.getpid(), os.getppid()}
    while time.monotonic() - started < max_wait_s:
        busy = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-f", "pytest"], capture_output=True, text=True, check=False
            ).stdout.split()
            if int(pid) not in mine and not _is_ancestor(int(pid))
        ]
        if not busy:
            return time.monotonic() - started
        if not announced:
            log(f"a pytest run is active (pids {busy}); waiting until it ends")
            announced = True
        time.sleep(10)
    return time.monotonic() - started


def _is_ancestor(pid: int) -> bool:
    """Whether `pid` is this process or one of its ancestors (the quick test runs us)."""
    current = os.getpid()
    for _ in range(64):
        if current == pid:
            return True
        try:
            with open(f"/proc/{current}/stat") as f:
                current = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if current <= 1:
            return False
    return False
