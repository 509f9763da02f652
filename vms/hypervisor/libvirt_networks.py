"""The network operations of the libvirt backend: each portal network defined, started and
kept in shape on a host (libvirt's network API, dnsmasq and iptables underneath), the
guard nwfilters its desktops' NICs use, and the DHCP leases that name their addresses.
Mixed into ``LibvirtHypervisor`` (vms/hypervisor/libvirt_backend.py)."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import partial
from typing import Any

import libvirt

from . import xml as vxml
from .errors import HypervisorError
from .libvirt_errors import or_none as _or_none
from .types import Lease, NetworkSpec

log = logging.getLogger(__name__)

Conn = Any  # libvirt.virConnect (libvirt-python ships no type information)


def _lookup_network(conn: Conn, name: str) -> Any:
    return _or_none(lambda: conn.networkLookupByName(name), libvirt.VIR_ERR_NO_NETWORK)


def _network_in_shape(conn: Conn, spec: NetworkSpec) -> Any:
    """The defined network if it has the mode, subnet and bridge ``spec`` asks for; one of
    another shape (the admin changed it) is removed, to be defined again."""
    net = _lookup_network(conn, spec.name)
    if net is None:
        return None
    if vxml.network_shape(net.XMLDesc(0)) == vxml.spec_shape(spec):
        return net
    log.warning("network %s changed shape; defining it again", spec.name)
    if net.isActive():
        net.destroy()
    net.undefine()
    return None


def _sync_dhcp_hosts(net: Any, wanted: set[tuple[str, str]]) -> None:
    """Make the network's fixed DHCP hosts ``wanted``, in its definition and in the running
    network (they differ after a repair), stale entries first: their address may be wanted
    by another MAC."""
    wanted = {(mac.lower(), ip) for mac, ip in wanted}
    try:
        config = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError:  # libvirt's test driver: one definition, live and kept
        both = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        _apply_dhcp_hosts(net, net.XMLDesc(0), wanted, both)
        return
    _apply_dhcp_hosts(net, config, wanted, libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
    if net.isActive():
        _apply_dhcp_hosts(net, net.XMLDesc(0), wanted, libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)


def _apply_dhcp_hosts(net: Any, xml: str, wanted: set[tuple[str, str]], flags: int) -> None:
    current = vxml.parse_network_hosts(xml)
    for command, entries in (
        (libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, current - wanted),
        (libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, wanted - current),
    ):
        for mac, ip in sorted(entries):
            net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
                       vxml.dhcp_host_xml(mac=mac, ip=ip), flags)  # fmt: skip


def _config_outdated(net: Any, network_xml: str) -> bool:
    """Whether the network's definition differs from ours in what a live update cannot
    change (whether dnsmasq forwards DNS upstream)."""
    try:
        config = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError:  # libvirt's test driver: one definition, live and kept
        config = net.XMLDesc(0)
    return vxml.forwards_dns(config) != vxml.forwards_dns(network_xml)


def _lookup_filter(conn: Conn, name: str) -> Any:
    return _or_none(partial(conn.nwfilterLookupByName, name), libvirt.VIR_ERR_NO_NWFILTER)


def _undefine_chain(conn: Conn, name: str) -> None:
    """Undefine filter `name` if it exists and is a chain (never a root filter)."""
    found = _lookup_filter(conn, name)
    if found is None:
        return
    chain = ET.fromstring(found.XMLDesc(0)).get("chain")  # noqa: S314 - from libvirtd
    if chain != "root":
        found.undefine()
        log.info("removed guard chain %s", name)


class LibvirtNetworkOps:
    """The network operations of ``LibvirtHypervisor`` (mixed in; it supplies ``_call`` and
    ``uri``)."""

    uri: str
    _call: Callable[..., Any]

    def ensure_network(self, spec: NetworkSpec) -> None:
        try:
            network_xml = vxml.build_network_xml(spec)
            root_filter, chain_filter = vxml.build_guard_filter_xml(spec)
        except ValueError as err:
            raise HypervisorError(f"invalid network '{spec.name}': {err}", permanent=True) from None

        def op(conn: Conn) -> None:
            self._define_filters(conn, chain_filter, root_filter)
            self._remove_legacy_chain(conn, spec.filter_name)
            net = _network_in_shape(conn, spec)
            if net is None:
                net = conn.networkDefineXML(network_xml)
                log.info("defined network %s", spec.name)
            elif not net.isPersistent() or _config_outdated(net, network_xml):
                # Undefined behind our back, or defined before its DNS rule: the definition
                # is written again (a running network takes it at its next start).
                net = conn.networkDefineXML(vxml.with_uuid(network_xml, str(net.UUIDString())))
                log.info("defined network %s again", spec.name)
            if not net.isActive():
                net.create()
                log.info("started network %s", spec.name)
            if not net.autostart():
                net.setAutostart(1)
            if spec.mode != "bridge":
                _sync_dhcp_hosts(net, set(spec.hosts))

        self._call(f"preparing network '{spec.name}'", op)

    def _define_filters(self, conn: Conn, *filters: str) -> None:
        """Define (again: that updates running guests' rules) the guard filters. libvirt's
        test driver has no nwfilter driver: its networks go without."""
        try:
            for filter_xml in filters:
                name = str(ET.fromstring(filter_xml).get("name"))  # noqa: S314 - ours
                found = _lookup_filter(conn, name)
                if found is not None:
                    filter_xml = vxml.with_uuid(filter_xml, str(found.UUIDString()))
                conn.nwfilterDefineXML(filter_xml)
        except libvirt.libvirtError as err:
            unsupported = err.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
            if not (self.uri.startswith("test:") and unsupported):
                raise

    def _remove_legacy_chain(self, conn: Conn, filter_name: str) -> None:
        """The chain of the old naming (``<root>-ipv4``), once the root no longer refers to
        it. Only a chain filter is removed: a root filter of that name is another network's
        guard (a network named ``x-ipv4``), which the old naming could overwrite."""
        if self.uri.startswith("test:"):
            return  # no nwfilter driver
        _undefine_chain(conn, filter_name + vxml.LEGACY_CHAIN_SUFFIX)

    def remove_network(self, *, name: str, filter_name: str) -> None:
        def op(conn: Conn) -> None:
            net = _lookup_network(conn, name)
            if net is not None:
                if net.isActive():
                    net.destroy()
                net.undefine()
            if self.uri.startswith("test:"):
                return  # no nwfilter driver
            root = _lookup_filter(conn, filter_name)
            if root is not None:
                root.undefine()
            for chain in (vxml.guard_chain_name(filter_name),
                          filter_name + vxml.LEGACY_CHAIN_SUFFIX):  # fmt: skip
                _undefine_chain(conn, chain)

        self._call(f"removing network '{name}'", op)

    def list_network_names(self, *, prefix: str) -> list[str]:
        def op(conn: Conn) -> list[str]:
            names = (str(net.name()) for net in conn.listAllNetworks(0))
            return sorted(name for name in names if name.startswith(prefix))

        names: list[str] = self._call("listing networks", op)
        return names

    def network_leases(self, *, name: str) -> list[Lease]:
        def op(conn: Conn) -> list[Lease]:
            net = _lookup_network(conn, name)
            if net is None or not net.isActive():
                return []
            return [
                Lease(mac=str(lease["mac"]).lower(), ip=str(lease["ipaddr"]))
                for lease in net.DHCPLeases()
                if lease.get("mac") and lease.get("ipaddr")
            ]

        leases: list[Lease] = self._call(f"reading the DHCP leases of network '{name}'", op)
        return leases
