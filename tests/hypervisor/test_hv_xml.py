"""XML building and parsing (no libvirt needed)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from vms.hypervisor import xml as vxml
from vms.hypervisor.types import DomainSpec, GraphicsType

NASTY_TITLE = 'Bob\'s <desktop> & "friends" ünïcødé 😀'


def make_spec(**overrides: object) -> DomainSpec:
    fields: dict[str, object] = {
        "name": "desk-1",
        "vcpus": 2,
        "memory_mib": 256,
        "disk_path": "/pool/desk-1.qcow2",
        "graphics": GraphicsType.vnc,
        "virt_type": "qemu",
        "title": NASTY_TITLE,
        "description": "line 1\nline 2 <b>",
        "desktop_id": "1",
        "console_password": "s3cret",
    }
    fields.update(overrides)
    return DomainSpec(**fields)  # type: ignore[arg-type]


def parse(text: str) -> ET.Element:
    return ET.fromstring(text)  # noqa: S314


def test_domain_xml_tcg() -> None:
    root = parse(vxml.build_domain_xml(make_spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "desk-1"
    assert root.findtext("title") == NASTY_TITLE
    assert root.findtext("description") == "line 1\nline 2 <b>"
    assert root.find("features/acpi") is not None
    tb = root.find("features/tcg/tb-cache")
    assert tb is not None and tb.text == "16" and tb.get("unit") == "MiB"
    assert root.findtext("memory") == "256" and root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "2"
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.findtext("on_crash") == "destroy"
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == "/pool/desk-1.qcow2"  # type: ignore[union-attr]
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    graphics = root.find("devices/graphics")
    assert graphics is not None
    assert graphics.get("type") == "vnc"
    assert graphics.get("listen") == "127.0.0.1"
    assert graphics.get("autoport") == "yes"
    assert graphics.get("passwd") == "s3cret"
    assert graphics.get("passwdValidTo") is None
    assert graphics.get("sharePolicy") == "force-shared"
    listen = graphics.find("listen")
    assert listen is not None and listen.get("address") == "127.0.0.1"
    assert root.find("devices/video/model").get("type") == "vga"  # type: ignore[union-attr]
    tablet = root.find("devices/input")
    assert tablet is not None and tablet.get("type") == "tablet" and tablet.get("bus") == "usb"
    meta = root.find(f"metadata/{{{vxml.METADATA_NS}}}desktop")
    assert meta is not None and meta.get("id") == "1"


def test_domain_xml_kvm_spice_and_expiry() -> None:
    until = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    spec = make_spec(virt_type="kvm", graphics=GraphicsType.spice, console_password_valid_to=until)
    root = parse(vxml.build_domain_xml(spec))
    assert root.get("type") == "kvm"
    assert root.find("features/tcg") is None
    graphics = root.find("devices/graphics")
    assert graphics is not None
    assert graphics.get("type") == "spice"
    assert graphics.get("sharePolicy") is None
    assert graphics.get("passwdValidTo") == "2030-01-02T01:04:05"  # converted to UTC
    # spice-server's multi-client mode, for QEMU's process (libvirt's QEMU namespace).
    [env] = root.findall(f"{{{vxml.QEMU_NS}}}commandline/{{{vxml.QEMU_NS}}}env")
    assert (env.get("name"), env.get("value")) == ("SPICE_DEBUG_ALLOW_MC", "1")


def test_a_vnc_domain_gets_no_qemu_commandline() -> None:
    root = parse(vxml.build_domain_xml(make_spec()))
    assert root.find(f"{{{vxml.QEMU_NS}}}commandline") is None


def test_injection_attempts_stay_text() -> None:
    evil = "x</name><devices><disk type='file'/></devices><name>y"
    root = parse(vxml.build_domain_xml(make_spec(name=evil, title=evil, description=evil)))
    assert root.findtext("name") == evil
    assert len(root.findall("devices/disk")) == 1


def test_title_is_one_line_and_control_chars_dropped() -> None:
    root = parse(vxml.build_domain_xml(make_spec(title="a\nb\x00\x07c", description="d\x01e")))
    assert root.findtext("title") == "a bc"
    assert root.findtext("description") == "de"


def test_bad_spec_is_rejected() -> None:
    with pytest.raises(ValueError):
        vxml.build_domain_xml(make_spec(virt_type="xen"))
    with pytest.raises(ValueError):
        vxml.build_domain_xml(make_spec(vcpus=0))


def test_volume_xml_overlay() -> None:
    root = parse(
        vxml.build_volume_xml(
            name="desk-1.qcow2", capacity_bytes=10 * 2**30, backing_path="/b/base.qcow2"
        )
    )
    assert root.findtext("name") == "desk-1.qcow2"
    assert root.findtext("capacity") == str(10 * 2**30)
    assert root.find("capacity").get("unit") == "bytes"  # type: ignore[union-attr]
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.findtext("backingStore/path") == "/b/base.qcow2"
    assert root.find("backingStore/format").get("type") == "qcow2"  # type: ignore[union-attr]


def test_console_endpoint_parsing() -> None:
    live = """<domain><devices>
      <graphics type='spice' port='5901' tlsPort='5902' autoport='yes' listen='127.0.0.1'>
        <listen type='address' address='127.0.0.1'/>
      </graphics></devices></domain>"""
    ep = vxml.parse_console_endpoint(live)
    assert ep is not None
    assert (ep.type, ep.host, ep.port, ep.tls_port) == (GraphicsType.spice, "127.0.0.1", 5901, 5902)
    stopped = "<domain><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>"
    assert vxml.parse_console_endpoint(stopped) is None


def test_password_update_keeps_listen_and_port() -> None:
    live = """<domain><devices>
      <graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1' sharePolicy='force-shared'>
        <listen type='address' address='127.0.0.1'/>
      </graphics></devices></domain>"""
    until = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    el = parse(vxml.graphics_password_update_xml(live, password="pw<&>", valid_to=until))
    assert el.tag == "graphics"
    assert el.get("passwd") == "pw<&>"
    assert el.get("passwdValidTo") == "2030-01-01T00:00:00"
    assert el.get("port") == "5900"
    assert el.find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]
