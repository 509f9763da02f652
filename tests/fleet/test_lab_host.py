"""scripts/lab-host: a lab host is a real second libvirtd, reachable only on its own
namespace's address, and `down` leaves no namespace, veth, daemon or state behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.fleet.conftest import lab_host

pytestmark = pytest.mark.libvirt
LAB_DIR = Path("/var/lib/desktop-portal/lab")


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie that this machine's PID 1 has not reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_two_lab_hosts_are_separate_libvirtds(lab_hosts) -> None:
    first, second = lab_hosts("laba"), lab_hosts("labb")
    assert first.startswith("qemu+tcp://10.213.") and first != second
    assert lab_hosts("laba") == first  # up again: the same host, nothing new
    for uri in (first, second):
        conn = libvirt.open(uri)
        try:
            assert conn.getHostname()
            # Its own /etc/libvirt: none of the machine's domains or pools are there.
            assert conn.listAllDomains() == [] and conn.listAllStoragePools() == []
        finally:
            conn.close()


def test_down_removes_everything_and_is_idempotent() -> None:
    assert lab_host("up", "labc").returncode == 0
    pid = int((LAB_DIR / "labc" / "run" / "libvirtd.pid").read_text())
    assert lab_host("down", "labc").returncode == 0
    assert lab_host("down", "labc").returncode == 0
    assert "dplab-labc" not in _namespaces()
    assert not _link_exists("dplab-labc")
    assert not _alive(pid)
    assert not (LAB_DIR / "labc").exists()
    assert lab_host("status", "labc").returncode == 3


@pytest.mark.parametrize("name", ["Upper", "has-dash", "toolongname", "1digit", ""])
def test_bad_names_are_refused(name: str) -> None:
    done = lab_host("up", name)
    assert done.returncode == 1 and "NAME must be" in done.stderr
    assert f"dplab-{name}" not in _namespaces()
