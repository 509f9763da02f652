"""A host's URI may use only the transports the docs name (docs/hypervisors.md, "Host URIs"):
no libvirt transport or parameter that runs a program, picks a socket or skips the check of
the host's identity, on the admin's form, on the command line, and for a host that got into
the database some other way.

The refused URIs name a harmless script of the test's own as the program to run: had libvirt
been given the URI, the script would have left its mark.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from vms.models import Host
from vms.services.core.errors import ServiceError
from vms.services.fleet.heartbeat import host_heartbeat
from vms.services.fleet.hosts import host_check_uri

pytestmark = pytest.mark.django_db

FORM = {
    "name": "hv1",
    "storage_pool": "desktops",
    "enabled": "on",
    "capacity_vcpus": "16",
    "capacity_memory_mib": "16384",
    "capacity_disk_gib": "500",
}


@pytest.fixture
def program(tmp_path: Path) -> tuple[Path, Path]:
    """A script that leaves a mark when run, and the mark's path."""
    mark, script = tmp_path / "ran", tmp_path / "program"
    script.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    script.chmod(stat.S_IRWXU)
    return script, mark


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("qemu+ext:///system?command={program}", "the transport 'ext' is not allowed"),
        ("qemu+tcp://127.0.0.1:1/system", "the transport 'tcp' is not allowed"),
        ("qemu+unix:///system?socket=/run/other-sock", "the transport 'unix' is not allowed"),
        ("qemu+libssh2://hv1.invalid/system", "the transport 'libssh2' is not allowed"),
        ("qemu+ssh://hv1.invalid/system?command={program}", "'command' is not allowed: it names"),
        ("qemu+ssh://hv1.invalid/system?netcat={program}", "'netcat' is not allowed"),
        ("qemu+ssh://hv1.invalid/system?socket=/tmp/s", "'socket' is not allowed"),
        ("qemu+ssh://hv1.invalid/system?COMMAND={program}", "'COMMAND' is not allowed"),
        ("qemu+ssh://hv1.invalid/system?%63ommand={program}", "'command' is not allowed"),
        ("qemu+tls://hv1.invalid/system?no_verify=1", "'no_verify' is not allowed: it turns off"),
        ("qemu+tls://hv1.invalid/system?pkipath=/a;command={program}", "must be an absolute path"),
        ("qemu+tls://hv1.invalid/system?pkipath=relative", "must be an absolute path"),
        ("qemu:///system?socket=/run/other-sock", "'socket' is not allowed"),
        ("qemu:///embed?root=/tmp/r", "path must be /session or /system"),
        ("test:///tmp/driver.xml", "path must be /default"),
        ("qemu+ssh://-oProxyCommand={program}/system", "not a host name or an address"),
        ("qemu+ssh://root:secret@hv1.invalid/system", "plain user name (no password)"),
        ("qemu+ssh:///system", "needs the host's name"),
        ("qemu+tls://hv1\t.invalid/system", "spaces or control characters"),
    ],
)
def test_transports_and_parameters_outside_the_allow_list_are_refused(
    uri: str, reason: str, program: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PORTAL_TEST_DRIVER_FILES")  # as in a portal (the tests set it)
    script, mark = program
    uri = uri.format(program=script)
    with pytest.raises(ServiceError, match=r"see docs/hypervisors\.md") as refused:
        host_check_uri(uri)
    assert reason in refused.value.message
    assert str(script) not in refused.value.message  # the URI is not repeated
    assert not mark.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "test:///default",
        "qemu+ssh://root@hv1.invalid/system",
        "qemu+ssh://admin@hv1.invalid:2222/system?keyfile=/etc/portal/id_ed25519&no_tty=1",
        "qemu+ssh://hv1.invalid/system?known_hosts=/etc/portal/known_hosts",
        "qemu+tls://hv1.invalid/system",
        "qemu+tls://10.213.1.2/system?pkipath=/var/lib/desktop-portal/lab/pki/client",
        "qemu+tls://[2001:db8::1]/system",
        "qemu://hv1.invalid/system",  # libvirt's default transport with a host: TLS
        "QEMU+TLS://hv1.invalid/system",
    ],
)
def test_the_documented_transports_pass(uri: str) -> None:
    assert host_check_uri(f" {uri} ") == uri


def test_the_admin_form_says_why_and_runs_nothing(
    admin_user_: Any, program: tuple[Path, Path]
) -> None:
    script, mark = program
    client = Client()
    client.force_login(admin_user_)
    # Capacity left empty: the form would read it from the host, i.e. connect.
    form = {**FORM, "capacity_vcpus": "", "capacity_memory_mib": "", "capacity_disk_gib": ""}
    page = client.post(
        "/admin/vms/host/add/", {**form, "uri": f"qemu+ext:///system?command={script}"}
    )
    assert not mark.exists()  # the program did not run
    assert page.status_code == 200  # the form again, with the reason on the URI field
    text = page.content.decode()
    assert "the transport &#x27;ext&#x27; is not allowed for a host" in text
    assert "qemu+tls://hv1/system" in text  # how to write it instead
    assert not Host.objects.filter(name="hv1").exists()


def test_the_command_line_says_why_and_runs_nothing(program: tuple[Path, Path]) -> None:
    script, mark = program
    with pytest.raises(CommandError, match="'command' is not allowed: it names a program"):
        call_command(
            "host_register", "hv1", "--uri", f"qemu+ssh://hv1.invalid/system?command={script}"
        )
    assert not Host.objects.filter(name="hv1").exists()
    assert not mark.exists()


def test_a_host_stored_with_such_a_uri_fails_its_heartbeat_without_running_it(
    program: tuple[Path, Path],
) -> None:
    script, mark = program
    host = Host.objects.create(name="hv1", uri=f"qemu+ext:///system?command={script}")
    assert host_heartbeat(host=host) is False
    assert not mark.exists()  # the program did not run
    host.refresh_from_db()
    assert not host.last_check_ok
    assert "the transport 'ext' is not allowed for a host" in host.last_check_error


def test_test_driver_files_only_where_the_environment_allows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tests' simulated fleets load libvirt's test driver from node files; a portal
    (without PORTAL_TEST_DRIVER_FILES=1) refuses them, and nobody gets a file that is not
    a node description."""
    assert host_check_uri("test:///tmp/fleet/hv001.xml") == "test:///tmp/fleet/hv001.xml"
    for path in ("/etc/shadow", "/tmp/fleet/../../etc/x.xml"):
        with pytest.raises(ServiceError, match="path must be /default"):
            host_check_uri(f"test://{path}")
    monkeypatch.delenv("PORTAL_TEST_DRIVER_FILES")
    with pytest.raises(ServiceError, match="path must be /default"):
        host_check_uri("test:///tmp/fleet/hv001.xml")
