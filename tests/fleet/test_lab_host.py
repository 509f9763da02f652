"""scripts/lab-host: a lab host is a real second libvirtd, reachable only on its own
namespace's address, and `down` leaves no namespace, veth, daemon or state behind."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import libvirt
import pytest

from tests.fleet.conftest import lab_dir, lab_host, lab_namespace

pytestmark = pytest.mark.libvirt


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
    assert first.startswith("qemu+tls://10.213.") and first != second
    assert lab_hosts("laba") == first  # up again: the same host, nothing new
    for uri in (first, second):
        conn = libvirt.open(uri)
        try:
            assert conn.getHostname()
            # Its own /etc/libvirt: none of the machine's domains or pools are there.
            assert conn.listAllDomains() == [] and conn.listAllStoragePools() == []
        finally:
            conn.close()


def test_a_new_host_starts_from_the_qemu_capabilities_an_earlier_one_found(lab_hosts) -> None:
    """libvirtd's probe of QEMU (seconds, a minute on a busy machine) runs once, not per
    host: scripts/lab-host keeps the cache and seeds each new host's with it."""
    lab_hosts("laba")
    started = time.time()
    lab_hosts("labb")
    cache = lab_dir("labb") / "cache" / "qemu" / "capabilities"
    written = [path.stat().st_mtime for path in cache.glob("*.xml")]
    assert written and max(written) < started  # copied in, not probed again by labb


def test_down_removes_everything_and_is_idempotent() -> None:
    assert lab_host("up", "labc").returncode == 0
    pid = int((lab_dir("labc") / "run" / "libvirtd.pid").read_text())
    assert lab_host("down", "labc").returncode == 0
    assert lab_host("down", "labc").returncode == 0
    assert lab_namespace("labc") not in _namespaces()
    assert not _link_exists(lab_namespace("labc"))
    assert not _alive(pid)
    assert not lab_dir("labc").exists()
    assert lab_host("status", "labc").returncode == 3


@pytest.mark.parametrize("name", ["Upper", "has-dash", "toolongname", "1digit", ""])
def test_bad_names_are_refused(name: str) -> None:
    done = lab_host("up", name)
    assert done.returncode == 1 and "NAME must be" in done.stderr
    assert lab_namespace(name) not in _namespaces()
