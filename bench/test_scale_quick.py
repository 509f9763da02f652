"""CI's guard against rot of the scale bench: run `python -m bench.scale --quick` end to end
(simulated hosts on libvirt's test driver, real PostgreSQL, Redis and one Celery worker;
about 30 s) and check that every figure was produced and that the routing was right. The
times are not judged (measurements); tests/test_scale.py judges the growth by counts.

    .venv/bin/pytest bench/test_scale_quick.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ["reconcile_one", "reconcile_all", "heartbeat_round", "heartbeat_hosts",
              "host_choose", "desktop_create", "admin_hosts", "api_hosts"]  # fmt: skip


@pytest.mark.servers  # the bench starts a Celery worker
@pytest.mark.timeout(600)
def test_quick_scale_bench_produces_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    assert len(results["runs"]) == 3
    for run in results["runs"]:
        assert run["check"]["first_pass_fixes"] == 0  # rows and simulated hosts agree
        for op in OPERATIONS:
            figures = run["ops"][op]
            assert figures["median_ms"] > 0 and figures["statements"] > 0, (op, figures)
        assert run["routing"]["misrouted_or_missing"] == 0
        assert run["routing"]["heartbeat_queues_wrong"] == 0
        assert "thumbnails_one" in run and run["thumbnails_one"]["stored"] > 0
        assert (
            sum(run["recovery_one"]["done"].values()) > 0
        )  # the host's desktops were aimed elsewhere
    assert set(results["growth"]) == set(OPERATIONS)
    assert results["worker"]["round_ms_median"] > 0 and results["worker"]["pss_kib"] > 0
    assert results["redis"]["per_queued_action"]["commands"] > 0
    assert all(r["rows"] > 0 for r in results["shared_pool"])
    assert "| Hosts | Desktops | Operation |" in (tmp_path / "latest.md").read_text()
