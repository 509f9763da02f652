"""Anonymous /healthz against the login page, in the same run (issue 25, item 5).

Before: each anonymous /healthz ran every check, a one-second Celery broadcast included,
while holding a pooled database connection (1,013 ms per request against 3 ms for the
login page; 40 at once took the site down). Now a stranger gets a verdict at most
HEALTHZ_CACHE_S old, worked out by one request at a time.

daphne as in the Procfile and a Celery worker, on the bench's database and Redis database;
wrk at 1 and at 40 concurrent connections on loopback, no cookie, for each path in turn. Prints and
writes bench/results/healthz/latest.{json,md}: requests per second, p50/p99 and the ratio
of /healthz to the login page.

    .venv/bin/python -m bench.healthz [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

CLIENTS = (1, 40)
PATHS = {"healthz": "/healthz", "login": "/login/"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "healthz")
    args = parser.parse_args(argv)
    import django

    django.setup()
    from bench.common import machine_info, write_json

    results: dict[str, Any] = {"machine": machine_info("n/a"), "clients": CLIENTS}
    results |= measure(seconds=args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latest.json", results)
    (args.out / "latest.md").write_text(table(results))
    print(table(results))
    return 0


def measure(*, seconds: int) -> dict[str, Any]:
    import redis
    from django.conf import settings
    from django.utils import timezone

    from bench.common import celery_command, daphne_command, free_port, log, running
    from bench.fixtures import database_prepare, local_host
    from vms.models import Host

    database_prepare()
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    host = local_host()
    port = free_port()
    out: dict[str, Any] = {"healthz_cache_s": settings.HEALTHZ_CACHE_S}
    with (
        running(celery_command("bench-healthz"), name="healthz-worker"),
        running(daphne_command(port), name="healthz-daphne", port=port),
    ):
        _wait_for_worker()  # else the first verdicts are "no worker answered" (503)
        for clients in CLIENTS:
            for name, path in PATHS.items():
                # The host is fresh for the whole run (no heartbeat task here).
                Host.objects.filter(pk=host.pk).update(last_checked_at=timezone.now(),
                                                       last_check_ok=True)  # fmt: skip
                url = f"http://127.0.0.1:{port}{path}"
                log(f"healthz: wrk {clients} connection(s), {path}")
                _wrk(url, 2, clients)  # warm-up (the first /healthz works the verdict out)
                out[f"{name}_c{clients}"] = _wrk(url, seconds, clients)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    for clients in CLIENTS:
        healthz, login = out[f"healthz_c{clients}"], out[f"login_c{clients}"]
        out[f"ratio_p50_c{clients}"] = healthz["p50_ms"] / login["p50_ms"]
        out[f"ratio_rps_c{clients}"] = login["rps"] / healthz["rps"]
    return out


def _wait_for_worker() -> None:
    import time

    from portal.celery import app

    deadline = time.monotonic() + 120
    while not app.control.ping(timeout=1.0):
        if time.monotonic() > deadline:
            raise SystemExit("the bench's Celery worker did not answer within 120 s")


def _wrk(url: str, seconds: int, clients: int) -> dict[str, Any]:
    from bench.common import BENCH

    done = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "--timeout", "10s", "--latency",
         "-s", str(BENCH / "wrk_plain.lua"), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("DPB-JSON "))
    data: dict[str, Any] = json.loads(line.removeprefix("DPB-JSON "))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["p50_ms"] = data["p50_us"] / 1000
    data["p99_ms"] = data["p99_us"] / 1000
    return data


def table(results: dict[str, Any]) -> str:
    rows = [
        f"Anonymous GETs, one daphne (HEALTHZ_CACHE_S={results['healthz_cache_s']}), wrk on "
        "loopback, the same run:",
        "",
        "| connections | path | requests/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for clients in CLIENTS:
        for name, path in PATHS.items():
            run = results[f"{name}_c{clients}"]
            rows.append(
                f"| {clients} | `{path}` | {run['rps']:.0f} | {run['p50_ms']:.1f} | "
                f"{run['p99_ms']:.1f} | {run['status_errors']} | {run['socket_errors']} |"
            )
    rows.append("")
    for clients in CLIENTS:
        rows.append(
            f"{clients} connection(s): /healthz p50 / login p50 = "
            f"{results[f'ratio_p50_c{clients}']:.2f}; login requests/s / /healthz "
            f"requests/s = {results[f'ratio_rps_c{clients}']:.2f}"
        )
    return "\n".join([*rows, ""])


if __name__ == "__main__":
    raise SystemExit(main())
