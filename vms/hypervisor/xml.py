"""Domain, volume and pool XML, built and parsed with ElementTree only.

Names, titles, descriptions and paths can come from users, so nothing here is built by string
formatting: ElementTree escapes text and attributes. Characters XML 1.0 cannot carry (most
control characters) are dropped, and titles are kept on one line (libvirt rejects newlines).

VNC share policy: QEMU's default (``allow-exclusive``) lets any client that asks for exclusive
access disconnect everybody else. Desktops are watched by several people at once (the owner
plus help-desk), so domains are defined with ``sharePolicy='force-shared'``: every client must
ask for a shared session, and a client asking for exclusive access is refused instead of
kicking the others. noVNC asks for a shared session by default (``shared: true``).

SPICE: spice-server serves one client per display unless the QEMU process runs with
``SPICE_DEBUG_ALLOW_MC=1`` (spice-server's multi-client mode; neither libvirt 9.0 nor QEMU
7.2 has a cleaner switch). Without it a help-desk viewer disconnects the owner, so SPICE
domains get it through libvirt's QEMU namespace (``<qemu:commandline><qemu:env/>``;
libvirt marks such domains tainted "custom-argv"). The relays keep view-only viewers off
the inputs channel, so only full-control sessions type.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from typing import Final

from .types import (
    ConsoleEndpoint,
    DomainSpec,
    GraphicsType,
    InterfaceSpec,
    NetworkSpec,
    VolumeInfo,
)

__all__ = [
    "METADATA_NS",
    "VALID_TO_FORMAT",
    "build_domain_xml",
    "build_guard_filter_xml",
    "build_network_xml",
    "build_pool_xml",
    "build_volume_xml",
    "graphics_password_update_xml",
    "parse_console_endpoint",
    "parse_desktop_id",
    "parse_network_hosts",
    "parse_physical_bytes",
    "parse_pool_path",
    "parse_volume",
    "passwd_valid_to",
]

METADATA_NS: Final = "urn:desktop-portal:1"
METADATA_PREFIX: Final = "portal"
VALID_TO_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"  # UTC, what libvirt expects
TCG_TB_CACHE_MIB: Final = 16
VNC_SHARE_POLICY: Final = "force-shared"
QEMU_NS: Final = "http://libvirt.org/schemas/domain/qemu/1.0"
SPICE_MULTI_CLIENT_ENV: Final = ("SPICE_DEBUG_ALLOW_MC", "1")
DNSMASQ_NS: Final = "http://libvirt.org/schemas/network/dnsmasq/1.0"
DNSMASQ_NO_UPSTREAM: Final = "no-resolv"

_NOT_XML_CHARS: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    """Drop characters XML 1.0 cannot represent."""
    return _NOT_XML_CHARS.sub("", text)


def _one_line(text: str) -> str:
    return " ".join(_clean(text).splitlines()).strip()


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _to_string(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def passwd_valid_to(when: dt.datetime) -> str:
    """Format an aware (or UTC-naive) datetime the way libvirt's ``passwdValidTo`` wants it."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime(VALID_TO_FORMAT)


def build_domain_xml(spec: DomainSpec) -> str:
    """The persistent definition of a desktop's domain."""
    if spec.virt_type not in ("kvm", "qemu"):
        raise ValueError(f"virt_type must be 'kvm' or 'qemu', not {spec.virt_type!r}")
    if spec.vcpus < 1 or spec.memory_mib < 16:
        raise ValueError("a domain needs at least 1 vCPU and 16 MiB of memory")

    root = ET.Element("domain", type=spec.virt_type)
    _sub(root, "name", _clean(spec.name))
    _sub(root, "title", _one_line(spec.title))
    _sub(root, "description", _clean(spec.description))
    metadata = _sub(root, "metadata")
    # A literal prefixed tag keeps the namespace declaration on the element itself.
    _sub(
        metadata,
        f"{METADATA_PREFIX}:desktop",
        **{f"xmlns:{METADATA_PREFIX}": METADATA_NS, "id": _clean(spec.desktop_id)},
    )
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    _sub(os_el, "boot", dev="hd")

    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.virt_type == "qemu":
        # A smaller translation-block cache than QEMU's default cuts each TCG guest's RSS.
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(TCG_TB_CACHE_MIB), unit="MiB")

    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format, discard="unmap")
    _sub(disk, "source", file=spec.disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")

    # A serial console for debugging (``virsh console``); nothing reads it otherwise.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")

    for interface in spec.interfaces:
        _interface(devices, interface)

    _sub(devices, "input", type="tablet", bus="usb")

    kind = GraphicsType(spec.graphics)  # also accepts the plain string "vnc"/"spice"
    graphics_attrs = {
        "type": kind.value,
        "autoport": "yes",
        "listen": spec.listen_address,
        "passwd": spec.console_password,
    }
    if spec.console_password_valid_to is not None:
        graphics_attrs["passwdValidTo"] = passwd_valid_to(spec.console_password_valid_to)
    if kind is GraphicsType.vnc:
        graphics_attrs["sharePolicy"] = VNC_SHARE_POLICY
    graphics = _sub(devices, "graphics", **graphics_attrs)
    _sub(graphics, "listen", type="address", address=spec.listen_address)

    video = _sub(devices, "video")
    _sub(video, "model", type="vga")
    if kind is GraphicsType.spice:
        _spice_multi_client(root)
    return _to_string(root)


def _spice_multi_client(root: ET.Element) -> None:
    """Let a SPICE display serve several clients at once (see the module docstring)."""
    commandline = _sub(root, "qemu:commandline", **{"xmlns:qemu": QEMU_NS})
    name, value = SPICE_MULTI_CLIENT_ENV
    _sub(commandline, "qemu:env", name=name, value=value)


def build_volume_xml(
    *,
    name: str,
    capacity_bytes: int,
    fmt: str = "qcow2",
    backing_path: str | None = None,
    backing_format: str = "qcow2",
    allocation_bytes: int | None = None,
) -> str:
    """A file volume; with ``backing_path`` a qcow2 overlay (linked clone) of that file."""
    if capacity_bytes < 0:
        raise ValueError("capacity_bytes must not be negative")
    root = ET.Element("volume", type="file")
    _sub(root, "name", _clean(name))
    _sub(root, "capacity", str(capacity_bytes), unit="bytes")
    if allocation_bytes is not None:
        _sub(root, "allocation", str(allocation_bytes), unit="bytes")
    target = _sub(root, "target")
    _sub(target, "format", type=fmt)
    if fmt == "qcow2":
        # qcow2 v3 (libvirt otherwise makes v2): zero clusters, so discards stay cheap.
        _sub(target, "compat", "1.1")
    if backing_path is not None:
        backing = _sub(root, "backingStore")
        _sub(backing, "path", backing_path)
        _sub(backing, "format", type=backing_format)
    return _to_string(root)


def build_copier_xml(*, name: str, disk_path: str) -> str:
    """A transient helper domain that only holds ``disk_path`` (an overlay being filled by a
    block pull): started paused, it runs no guest code, has no network, display or
    console, and the smallest memory QEMU accepts. See ``LibvirtDiskOps.copy_start``."""
    root = ET.Element("domain", type="qemu")
    _sub(root, "name", _clean(name))
    _sub(root, "memory", "16", unit="MiB")
    _sub(root, "vcpu", "1")
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    return _to_string(root)


def build_pool_xml(*, name: str, path: str) -> str:
    """A directory storage pool."""
    root = ET.Element("pool", type="dir")
    _sub(root, "name", _clean(name))
    target = _sub(root, "target")
    _sub(target, "path", path)
    return _to_string(root)


def parse_pool_path(pool_xml: str) -> str | None:
    """The target directory of a storage pool."""
    root = ET.fromstring(pool_xml)  # noqa: S314 - XML comes from libvirtd, not users
    return root.findtext("./target/path")


def parse_desktop_id(domain_xml: str) -> str | None:
    """The desktop id stored in our ``<metadata>`` element, if any."""
    root = ET.fromstring(domain_xml)  # noqa: S314 - XML comes from libvirtd, not users
    el = root.find(f"./metadata/{{{METADATA_NS}}}desktop")
    if el is None:
        return None
    return el.get("id")


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


def parse_console_endpoint(domain_xml: str) -> ConsoleEndpoint | None:
    """The first VNC or SPICE display of a live domain, or None if it has no usable port.

    The port is the one QEMU really got (``autoport``); a defined-but-stopped domain reports
    ``port='-1'`` and yields None.
    """
    root = ET.fromstring(domain_xml)  # noqa: S314 - XML comes from libvirtd, not users
    for graphics in root.findall("./devices/graphics"):
        kind = graphics.get("type")
        if kind not in (GraphicsType.vnc.value, GraphicsType.spice.value):
            continue
        port = _int_or_none(graphics.get("port"))
        tls_port = _int_or_none(graphics.get("tlsPort"))
        if port is None and tls_port is None:
            return None
        host = graphics.get("listen")
        listen = graphics.find("./listen[@type='address']")
        if listen is not None and listen.get("address"):
            host = listen.get("address")
        if not host or host in ("0.0.0.0", "::"):  # noqa: S104 - we only read it
            host = "127.0.0.1"
        return ConsoleEndpoint(
            type=GraphicsType(kind),
            host=host,
            port=port if port is not None else -1,
            tls_port=tls_port,
        )
    return None


def graphics_password_update_xml(
    live_domain_xml: str, *, password: str, valid_to: dt.datetime | None
) -> str:
    """The live ``<graphics>`` element with a new password, for ``updateDeviceFlags``.

    libvirt refuses a graphics update that changes anything it cannot change live (listen
    address, port), so the element is copied from the live XML and only the password changes.
    """
    root = ET.fromstring(live_domain_xml)  # noqa: S314 - XML comes from libvirtd, not users
    for graphics in root.findall("./devices/graphics"):
        if graphics.get("type") in (GraphicsType.vnc.value, GraphicsType.spice.value):
            graphics.set("passwd", password)
            if valid_to is None:
                graphics.attrib.pop("passwdValidTo", None)
            else:
                graphics.set("passwdValidTo", passwd_valid_to(valid_to))
            graphics.tail = None
            return ET.tostring(graphics, encoding="unicode")
    raise LookupError("domain has no VNC or SPICE display")


def _bytes_of(el: ET.Element | None) -> int:
    if el is None or el.text is None:
        return 0
    value = int(el.text)
    unit = (el.get("unit") or "bytes").lower()
    scale = {
        "b": 1,
        "bytes": 1,
        "k": 1024,
        "kib": 1024,
        "m": 1024**2,
        "mib": 1024**2,
        "g": 1024**3,
        "gib": 1024**3,
        "t": 1024**4,
        "tib": 1024**4,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "tb": 1000**4,
    }
    return value * scale.get(unit, 1)


def parse_volume(volume_xml: str) -> VolumeInfo:
    """A ``VolumeInfo`` from a volume's XML description."""
    root = ET.fromstring(volume_xml)  # noqa: S314 - XML comes from libvirtd, not users
    backing = root.findtext("./backingStore/path")
    fmt_el = root.find("./target/format")
    return VolumeInfo(
        name=root.findtext("./name") or "",
        path=root.findtext("./target/path") or "",
        capacity_bytes=_bytes_of(root.find("./capacity")),
        allocation_bytes=_bytes_of(root.find("./allocation")),
        backing_path=backing or None,
        format=fmt_el.get("type") if fmt_el is not None else None,
    )


def parse_physical_bytes(volume_xml: str) -> int | None:
    """The on-disk file size libvirt reports for a file volume (``<physical>``), if any."""
    root = ET.fromstring(volume_xml)  # noqa: S314 - XML comes from libvirtd, not users
    el = root.find("./physical")
    return _bytes_of(el) if el is not None else None


def domain_xml_moved(domain_xml: str, *, listen_address: str) -> str:
    """A domain's migratable XML for another host: its displays listen on that host's
    console address. Everything else, the display password included, stays as it is."""
    root = ET.fromstring(domain_xml)  # noqa: S314 - XML comes from libvirtd, not users
    for graphics in root.findall("./devices/graphics"):
        if graphics.get("type") not in (GraphicsType.vnc.value, GraphicsType.spice.value):
            continue
        graphics.set("listen", listen_address)
        for listen in graphics.findall("./listen"):
            graphics.remove(listen)
        _sub(graphics, "listen", type="address", address=listen_address)
    return ET.tostring(root, encoding="unicode")


# --- networks (docs/networks.md) ------------------------------------------------------------

BURST_FRACTION: Final = 10  # a burst of a tenth of a second's worth keeps rates near the limit
MIN_BURST_KB: Final = 16


def _interface(devices: ET.Element, spec: InterfaceSpec) -> None:
    """A virtio NIC on a libvirt network, with its guard filter, isolation and limits."""
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "mac", address=spec.mac)
    _sub(nic, "source", network=_clean(spec.network))
    _sub(nic, "model", type="virtio")
    if spec.bandwidth_kb_s:
        rate = str(spec.bandwidth_kb_s)
        burst = str(max(spec.bandwidth_kb_s // BURST_FRACTION, MIN_BURST_KB))
        bandwidth = _sub(nic, "bandwidth")
        _sub(bandwidth, "inbound", average=rate, burst=burst)
        _sub(bandwidth, "outbound", average=rate, burst=burst)
    if spec.filter:
        filterref = _sub(nic, "filterref", filter=_clean(spec.filter))
        if spec.ip:
            _sub(filterref, "parameter", name="IP", value=spec.ip)
    if spec.isolated:
        _sub(nic, "port", isolated="yes")


def build_network_xml(spec: NetworkSpec) -> str:
    """A libvirt network: NAT or isolated (a bridge of libvirt's naming, dnsmasq with the
    DHCP range and fixed hosts), or a bridged one on an existing bridge of the host."""
    root = ET.Element("network")
    _sub(root, "name", _clean(spec.name))
    if spec.mode == "bridge":
        if not spec.bridge:
            raise ValueError("a bridged network needs a bridge")
        _sub(root, "forward", mode="bridge")
        _sub(root, "bridge", name=spec.bridge)
        return _to_string(root)
    if spec.mode not in ("nat", "isolated"):
        raise ValueError(f"mode must be nat, isolated or bridge, not {spec.mode!r}")
    if spec.gateway is None or spec.prefix_length is None:
        raise ValueError("a NAT or isolated network needs a gateway address and prefix")
    if spec.mode == "nat":
        _sub(root, "forward", mode="nat")
    else:  # isolated: dnsmasq answers the network's own names only, and forwards nothing
        options = _sub(root, "dnsmasq:options", **{"xmlns:dnsmasq": DNSMASQ_NS})
        _sub(options, "dnsmasq:option", value=DNSMASQ_NO_UPSTREAM)
    _sub(root, "bridge", stp="off", delay="0")
    # The gateway's MAC is the same on every host: a desktop that moves live keeps its ARP
    # entry for the gateway, and it stays right.
    _sub(root, "mac", address=gateway_mac(spec.name))
    ip = _sub(root, "ip", address=spec.gateway, prefix=str(spec.prefix_length))
    dhcp = _sub(ip, "dhcp")
    if spec.dhcp_start and spec.dhcp_end:
        _sub(dhcp, "range", start=spec.dhcp_start, end=spec.dhcp_end)
    for mac, address in spec.hosts:
        _sub(dhcp, "host", mac=mac, ip=address)
    return _to_string(root)


def gateway_mac(network_name: str) -> str:
    """A stable, locally administered MAC for a network's bridge, from its name."""
    digest = hashlib.sha256(network_name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def dhcp_host_xml(*, mac: str, ip: str) -> str:
    """One fixed DHCP host entry, for ``virNetworkUpdate``."""
    return ET.tostring(ET.Element("host", mac=mac, ip=ip), encoding="unicode")


def parse_network_hosts(network_xml: str) -> set[tuple[str, str]]:
    """The fixed DHCP hosts (MAC, address) of a network's definition."""
    root = ET.fromstring(network_xml)  # noqa: S314 - XML comes from libvirtd, not users
    return {
        ((el.get("mac") or "").lower(), el.get("ip") or "") for el in root.findall("./ip/dhcp/host")
    }


def network_shape(network_xml: str) -> tuple[str, str, str, str]:
    """What must match for a defined network to serve a spec: forward mode, gateway,
    prefix and bridge (of a bridged network)."""
    root = ET.fromstring(network_xml)  # noqa: S314 - XML comes from libvirtd, not users
    forward = root.find("./forward")
    mode = "isolated" if forward is None else forward.get("mode") or "nat"
    ip = root.find("./ip")
    gateway = ip.get("address", "") if ip is not None else ""
    prefix = ip.get("prefix", "") if ip is not None else ""
    bridge = root.find("./bridge")
    name = bridge.get("name", "") if bridge is not None and mode == "bridge" else ""
    return mode, gateway, prefix, name


def forwards_dns(network_xml: str) -> bool:
    """Whether the network's dnsmasq may forward DNS queries upstream (no ``no-resolv``)."""
    root = ET.fromstring(network_xml)  # noqa: S314 - XML comes from libvirtd, not users
    options = root.findall(f"./{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")
    return all(option.get("value") != DNSMASQ_NO_UPSTREAM for option in options)


def spec_shape(spec: NetworkSpec) -> tuple[str, str, str, str]:
    """``network_shape`` of the network ``spec`` asks for."""
    if spec.mode == "bridge":
        return "bridge", "", "", spec.bridge or ""
    return spec.mode, spec.gateway or "", str(spec.prefix_length or ""), ""


def with_uuid(definition_xml: str, uuid: str) -> str:
    """A filter or network definition that redefines the existing one of that UUID (libvirt
    refuses one of an existing name under no or another UUID)."""
    root = ET.fromstring(definition_xml)  # noqa: S314 - built here, not from users
    for old in root.findall("./uuid"):
        root.remove(old)
    el = ET.Element("uuid")
    el.text = uuid
    root.insert(1 if root.tag == "network" else 0, el)  # a network's comes after its name
    return ET.tostring(root, encoding="unicode")


def _rule(parent: ET.Element, action: str, priority: int, **match: str) -> None:
    rule = _sub(parent, "rule", action=action, direction="out", priority=str(priority))
    _sub(rule, "ip", **match)


def _destination(address: str) -> dict[str, str]:
    """The ``ip`` match of an address or an IPv4 CIDR block."""
    network = ipaddress.IPv4Network(address, strict=False)
    if network.prefixlen == 32:
        return {"dstipaddr": str(network.network_address)}
    return {"dstipaddr": str(network.network_address), "dstipmask": str(network.prefixlen)}


def guard_chain_name(filter_name: str) -> str:
    """The guard's IPv4 chain filter. Network names are slugs (no dot), so no network's
    root filter can carry this name (the old ``-ipv4`` suffix could: LEGACY_CHAIN_SUFFIX)."""
    return f"{filter_name}.ipv4"


LEGACY_CHAIN_SUFFIX: Final = "-ipv4"


class _Chain:
    """The guard chain's rules, in order (each one a priority above the one before)."""

    def __init__(self, filter_name: str) -> None:
        self.root = ET.Element(
            "filter", name=guard_chain_name(filter_name), chain="ipv4-guard", priority="-700"
        )
        self._priority = 0

    def add(self, action: str, **match: str) -> None:
        self._priority += 1
        _rule(self.root, action, self._priority, **match)


def build_guard_filter_xml(spec: NetworkSpec) -> tuple[str, str]:
    """The network's guard: (root filter, its IPv4 chain), defined on every host.

    The root filter takes in libvirt's ``clean-traffic`` (no MAC, IP or ARP spoofing, no
    other layer-2 traffic; the IP parameter comes from the NIC) and the IPv4 chain, which
    runs after clean-traffic's source checks and before it accepts IPv4 (priority -700).
    In order (the first match decides; docs/networks.md "The guard"): no DHCP answers from
    a desktop; DHCP requests only to the gateway or broadcast; DNS and the allowed TCP
    ports on the gateway; nothing else to the gateway nor to the management plane
    (``blocked_addresses``); the own subnet (dropped when desktops are isolated, so no
    desktop reaches another through the gateway); ``allowed_ranges``; nothing to
    ``denied_ranges``; the rest passes.
    """
    chain = _Chain(spec.filter_name)
    chain.add("drop", protocol="udp", srcportstart="67", srcportend="67")  # rogue DHCP server
    dhcp = {"protocol": "udp", "dstportstart": "67", "dstportend": "67"}
    chain.add("return", dstipaddr="255.255.255.255", **dhcp)
    if spec.gateway:
        chain.add("return", dstipaddr=spec.gateway, **dhcp)
    elif spec.subnet:  # bridged: the LAN's DHCP server, somewhere on its subnet
        chain.add("return", **_destination(spec.subnet), **dhcp)
    chain.add("drop", **dhcp)
    if spec.gateway:
        for protocol in ("udp", "tcp"):
            chain.add("return", dstipaddr=spec.gateway, protocol=protocol, dstportstart="53",
                      dstportend="53")  # fmt: skip
        for port in spec.gateway_ports:
            chain.add("return", dstipaddr=spec.gateway, protocol="tcp", dstportstart=str(port),
                      dstportend=str(port))  # fmt: skip
    blocked = ([spec.gateway] if spec.gateway else []) + list(spec.blocked_addresses)
    for address in dict.fromkeys(blocked):
        chain.add("drop", **_destination(address))
    if spec.subnet:
        isolate = spec.isolate_desktops and spec.mode != "bridge"
        chain.add("drop" if isolate else "return", **_destination(spec.subnet))
    for address in spec.allowed_ranges:
        chain.add("return", **_destination(address))
    for address in spec.denied_ranges:
        chain.add("drop", **_destination(address))
    root = ET.Element("filter", name=spec.filter_name, chain="root")
    _sub(root, "filterref", filter=guard_chain_name(spec.filter_name))
    _sub(root, "filterref", filter="clean-traffic")
    return _to_string(root), _to_string(chain.root)
