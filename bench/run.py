"""Run the portal's bench and write its results table (Markdown and JSON) and plots.

    .venv/bin/python bench/run.py            # full run, ~10 min on 2 cores -> bench/results/
    .venv/bin/python bench/run.py --quick    # reduced run for CI, ~1.5 min -> bench/results/quick/

Measurements, not pass/fail tests: every figure that depends on the machine's speed is
reported with a baseline measured in the same run, and every target with whether it was met.
Uses its own PostgreSQL database (portal_bench), Redis database 14, libvirt names starting
with dpb- and the storage pool portal-bench; every domain and volume it makes is removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
# Playwright's sync API keeps an event loop in the main thread; the bench's ORM calls there
# are plain synchronous code.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

SECTIONS = ("clone", "relay", "desktop", "load")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced variant for CI")
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="do not wait for an active pytest run to end"
    )
    args = parser.parse_args(argv)
    out = args.out or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    sections = args.only or list(SECTIONS)

    import django

    django.setup()

    from bench import report
    from bench.common import libvirt_cleanup, log, machine_info, wait_for_quiet_machine
    from vms.hypervisor import get_hypervisor

    if not args.quick and not args.no_wait:
        wait_for_quiet_machine()
    started = time.time()
    kvm = get_hypervisor("qemu:///system").kvm_available()
    results: dict[str, object] = {
        "mode": "quick" if args.quick else "full",
        "machine": machine_info("KVM" if kvm else "TCG (no usable KVM)"),
        "command": "bench/run.py" + (" --quick" if args.quick else ""),
        "sections": {},
        "errors": {},
    }
    try:
        from bench import fixtures

        log("preparing the bench database, host, pool and template")
        fixtures.database_prepare()
        libvirt_cleanup()
        host = fixtures.local_host()
        template = fixtures.bench_template()
        for section in sections:
            log(f"== {section}")
            section_started = time.time()
            try:
                module = __import__(f"bench.{section}", fromlist=["run"])
                data = module.run(template=template, host=host, quick=args.quick)
                data["elapsed_s"] = round(time.time() - section_started, 1)
                results["sections"][section] = data  # type: ignore[index]
            except Exception:
                traceback.print_exc()
                results["errors"][section] = traceback.format_exc(limit=8)  # type: ignore[index]
            finally:
                libvirt_cleanup(keep=(fixtures.BASE_VOLUME,))
    finally:
        removed = libvirt_cleanup()
        if removed:
            log(f"removed left-overs: {', '.join(removed)}")
        import redis
        from django.conf import settings

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    results["duration_s"] = round(time.time() - started, 1)
    # A full run into the default folder also refreshes the table in bench/README.md.
    paths = report.write(
        results, out, readme=not args.quick and args.out is None and args.only is None
    )
    log(f"done in {results['duration_s']} s: {', '.join(str(p) for p in paths)}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
