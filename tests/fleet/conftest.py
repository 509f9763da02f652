"""Lab hosts (scripts/lab-host): second libvirtds on this machine, each in a network
namespace of its own. Every host a test brings up is brought down, with its namespace, veth
and daemons, when the test's scope ends."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_HOST = ROOT / "scripts" / "lab-host"


def lab_host(command: str, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_HOST), command, name], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def lab_hosts() -> Iterator[Callable[[str], str]]:
    """`up(name)` brings a lab host up and returns its URI; all go down at the end."""
    started: list[str] = []

    def up(name: str) -> str:
        done = lab_host("up", name)
        assert done.returncode == 0, done.stderr
        started.append(name)
        return done.stdout.strip()

    yield up
    failures = [lab_host("down", name) for name in reversed(started)]
    assert all(f.returncode == 0 for f in failures), [f.stderr for f in failures]
