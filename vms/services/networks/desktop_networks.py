"""Desktop networks: the admin's networks, a template's networks, desktops' interfaces.

The hypervisor layer creates each network (and its guard nwfilter) on a host when a desktop
there needs it, and reconcile repairs a missing or stopped one on every host. Interfaces
are allocated with the desktop (in its transaction): a MAC of QEMU's 52:54:00 prefix, unique,
kept for the desktop's life, and a fixed address of the network's range (bridged ones too).
The addresses pages show come from libvirt's DHCP leases, read by the host's heartbeat.
See docs/networks.md for the segmentation each network gets.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from vms.hypervisor import HypervisorError, InterfaceSpec, NetworkSpec
from vms.hypervisor.xml import gateway_mac
from vms.models import (
    Desktop,
    DesktopInterface,
    DesktopStatus,
    Host,
    Network,
    NetworkMode,
    Template,
    TemplateNetwork,
)
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import NetworkInUse, NetworkInvalid
from vms.services.core.locks import NetworkBusy, network_lock
from vms.services.core.queue import enqueue_tasks
from vms.services.desktops.events import push_desktop_changed
from vms.services.fleet.hosts import hypervisor_for
from vms.services.networks.egress import (
    egress_allowed,
    egress_denied,
    fleet_changed,
    management_plane,
)
from vms.settings_access import name_prefix

log = logging.getLogger(__name__)
MAC_PREFIX = "52:54:00"
MAX_GATEWAY_PORTS = 32
# The fields that decide a network's shape on the hosts: not changed while it is in use.
SHAPE_FIELDS = frozenset({"mode", "subnet", "dhcp_start", "dhcp_end", "bridge"})
EDITABLE_FIELDS = SHAPE_FIELDS | {"name", "isolate_desktops", "gateway_ports"}


def libvirt_network_name(network: Network) -> str:
    return f"{name_prefix()}net-{network.name}"


def guard_filter_name(network: Network) -> str:
    return f"{name_prefix()}guard-{network.name}"


# --- the admin's networks -------------------------------------------------------------------


@dataclass(frozen=True)
class Addressing:
    """A managed network's gateway, prefix and DHCP range."""

    gateway: str
    prefix_length: int
    dhcp_start: str
    dhcp_end: str


def network_addressing(network: Network) -> Addressing | None:
    """Gateway (the subnet's first address), prefix and DHCP range; None when bridged."""
    if network.mode == NetworkMode.BRIDGE:
        return None
    return _addressing(network)


def _addressing(network: Network) -> Addressing:
    """The subnet's first address, prefix and the range desktops' addresses come from (a
    bridged network's too: the portal pins each desktop to one, docs/networks.md)."""
    subnet = ipaddress.IPv4Network(network.subnet)
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    return Addressing(
        gateway=str(first),
        prefix_length=subnet.prefixlen,
        dhcp_start=network.dhcp_start or str(first + 1),
        dhcp_end=network.dhcp_end or str(last),
    )


def network_clean(network: Network) -> None:
    """Check a network before it is saved; NetworkInvalid says what is wrong."""
    if network.mode not in NetworkMode.values:
        raise NetworkInvalid("mode must be one of: nat, isolated, bridge.")
    try:
        network.full_clean(exclude=["gateway_ports", "subnet", "dhcp_start", "dhcp_end"])
    except Exception as exc:  # Django's ValidationError: shown as it is
        raise NetworkInvalid(_first_message(exc)) from exc
    network.gateway_ports = _ports_clean(network.gateway_ports)
    if network.mode == NetworkMode.BRIDGE:
        if not network.bridge.strip() or not _is_ifname(network.bridge.strip()):
            raise NetworkInvalid("A bridged network needs the name of an existing bridge.")
        network.bridge = network.bridge.strip()
        if not (network.subnet or "").strip():
            raise NetworkInvalid(
                "A bridged network needs the LAN's subnet: each desktop is pinned to an "
                "address of it (dhcp_start to dhcp_end, default all but the first)."
            )
    else:
        network.bridge = ""
    _subnet_clean(network)


def _first_message(exc: Exception) -> str:
    messages = getattr(exc, "message_dict", None)
    if messages:
        field, errors = next(iter(messages.items()))
        return f"{field}: {errors[0]}"
    return str(exc)


def _is_ifname(name: str) -> bool:
    return 0 < len(name) <= 15 and all(c.isalnum() or c in "-_." for c in name)


def _ports_clean(ports: Any) -> list[int]:
    if not isinstance(ports, list) or len(ports) > MAX_GATEWAY_PORTS:
        raise NetworkInvalid(f"gateway_ports must be a list of at most {MAX_GATEWAY_PORTS} ports.")
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise NetworkInvalid("gateway_ports must hold TCP port numbers from 1 to 65535.")
    return sorted(set(ports))


def _subnet_clean(network: Network) -> None:
    try:
        subnet = ipaddress.IPv4Network(network.subnet.strip(), strict=True)
    except ValueError:
        raise NetworkInvalid(
            "subnet must be an IPv4 network such as 10.80.0.0/24 (no host bits set)."
        ) from None
    if not 16 <= subnet.prefixlen <= 29 or not subnet.is_private:
        raise NetworkInvalid("subnet must be a private IPv4 network from /16 to /29.")
    network.subnet = str(subnet)
    for field in ("dhcp_start", "dhcp_end"):
        value = getattr(network, field)
        if value in ("", None):
            setattr(network, field, None)
            continue
        if ipaddress.IPv4Address(value) not in subnet:
            raise NetworkInvalid(f"{field} must be an address of the subnet {subnet}.")
    addressing = _addressing(network)
    start, end = (ipaddress.IPv4Address(a) for a in (addressing.dhcp_start, addressing.dhcp_end))
    if not ipaddress.IPv4Address(addressing.gateway) < start <= end:
        raise NetworkInvalid("The DHCP range must lie after the gateway and start before it ends.")
    for other in Network.objects.exclude(pk=network.pk).exclude(subnet=""):
        if ipaddress.IPv4Network(other.subnet).overlaps(subnet):
            raise NetworkInvalid(f"subnet {subnet} overlaps network {other.name} ({other.subnet}).")


def network_create(*, actor: User, **fields: Any) -> Network:
    """A new network (admin); it is created on a host when a desktop there needs it, and on
    every host by the next reconcile."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise NetworkInvalid(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    network = Network(**fields)
    network_clean(network)
    with transaction.atomic():
        _save(network)
        audit_record(action=AuditVerb.NETWORK_CREATE, actor=actor, **_described(network))
    return network


def _save(network: Network) -> None:
    try:
        with transaction.atomic():
            network.save()
    except IntegrityError:
        raise NetworkInvalid(f"A network named {network.name!r} exists already.") from None


def _described(network: Network) -> dict[str, Any]:
    return {"network": network.name, "mode": network.mode, "subnet": network.subnet,
            "bridge": network.bridge, "isolate_desktops": network.isolate_desktops,
            "gateway_ports": network.gateway_ports}  # fmt: skip


def network_in_use(network: Network) -> str:
    """Why the network cannot go or change shape ("" when it can)."""
    templates = list(network.templates.values_list("name", flat=True)[:3])
    if templates:
        return f"Network {network.name} is used by template(s) {', '.join(templates)}."
    if DesktopInterface.objects.filter(network=network).exists():
        return f"Network {network.name} is used by desktops; delete them first."
    return ""


def network_update(*, actor: User, network: Network, **changes: Any) -> Network:
    """Change a network (admin). Its shape (mode, subnet, range, bridge) is kept while a
    template or desktop uses it; the guard (isolation, ports) is defined again on every
    host at once, which reaches the running desktops (guards_refresh)."""
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown:
        raise NetworkInvalid(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    reshaped = {
        f for f in SHAPE_FIELDS | {"name"} if f in changes and changes[f] != getattr(network, f)
    }
    # A bridged network from before subnets may get one while in use: its desktops are
    # then pinned to addresses of it (from their next boot on).
    pinning = network.mode == NetworkMode.BRIDGE and not network.subnet
    if pinning:
        reshaped -= {"subnet", "dhcp_start", "dhcp_end"}
    if reshaped and (reason := network_in_use(network)):
        raise NetworkInUse(f"{reason} Its {', '.join(sorted(reshaped))} cannot change now.")
    old_names = (libvirt_network_name(network), guard_filter_name(network))
    for field, value in changes.items():
        setattr(network, field, value)
    network_clean(network)
    with transaction.atomic():
        _save(network)
        audit_record(action=AuditVerb.NETWORK_UPDATE, actor=actor, **_described(network))
        if reshaped:
            _enqueue_removal(*old_names)
        if pinning:
            _pin_unpinned(network)
        guards_refresh()
    return network


def _pin_unpinned(network: Network) -> None:
    """Give the network's interfaces that have no address one of its range each."""
    Network.objects.select_for_update().filter(pk=network.pk).first()
    rows = DesktopInterface.objects.filter(network=network, ip__isnull=True).exclude(
        desktop__status=DesktopStatus.DELETED
    )
    for row in rows:
        DesktopInterface.objects.filter(pk=row.pk).update(ip=_free_address(network))


def network_delete(*, actor: User, network: Network) -> None:
    """Delete a network nobody uses (NetworkInUse otherwise); each host removes its copy."""
    with transaction.atomic():
        Network.objects.select_for_update().filter(pk=network.pk).first()
        reason = network_in_use(network)
        if reason:
            raise NetworkInUse(reason)
        names = (libvirt_network_name(network), guard_filter_name(network))
        audit_record(action=AuditVerb.NETWORK_DELETE, actor=actor, **_described(network))
        network.delete()
        _enqueue_removal(*names)


def _enqueue_removal(name: str, filter_name: str) -> None:
    hosts = Host.objects.filter(enabled=True)
    enqueue_tasks("vms.tasks.network_remove", [(h.queue_name, (h.pk, name, filter_name))
                                               for h in hosts])  # fmt: skip


def guards_refresh() -> None:
    """Every enabled host defines its networks' guards again (once the transaction
    commits): the fleet's addresses changed, or a network's isolation or ports did. libvirt
    applies a redefined filter to the running desktops at once."""
    fleet_changed()
    hosts = Host.objects.filter(enabled=True)
    enqueue_tasks("vms.tasks.networks_refresh", [(h.queue_name, (h.pk,)) for h in hosts])


def network_remove_from_host(*, host: Host, name: str, filter_name: str) -> None:
    """The host's side of a deletion (run by the host's worker)."""
    hypervisor_for(host).remove_network(name=name, filter_name=filter_name)


def template_networks_set(*, actor: User, template: Template, network_ids: Sequence[Any]) -> None:
    """A template's networks, in order (its desktops' NICs, from the next launch on)."""
    if not isinstance(network_ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in network_ids
    ):
        raise NetworkInvalid("networks must be a list of network ids.")
    if len(set(network_ids)) != len(network_ids):
        raise NetworkInvalid("networks must not name a network twice.")
    found = {n.pk: n for n in Network.objects.filter(pk__in=network_ids)}
    missing = [str(i) for i in network_ids if i not in found]
    if missing:
        raise NetworkInvalid(f"No such network: {', '.join(missing)}.")
    with transaction.atomic():
        TemplateNetwork.objects.filter(template=template).delete()
        TemplateNetwork.objects.bulk_create(
            TemplateNetwork(template=template, network=found[i], position=n)
            for n, i in enumerate(network_ids)
        )
        audit_record(action=AuditVerb.TEMPLATE_NETWORKS, actor=actor, template=template.name,
                     networks=[found[i].name for i in network_ids])  # fmt: skip


def template_bandwidth_set(*, actor: User, template: Template, kb_s: int | None) -> None:
    """Each NIC's limit for the template's desktops, each way (None: no limit); from their
    next boot on."""
    with transaction.atomic():
        Template.objects.filter(pk=template.pk).update(bandwidth_kb_s=kb_s)
        template.bandwidth_kb_s = kb_s
        audit_record(
            action=AuditVerb.TEMPLATE_BANDWIDTH, actor=actor, template=template.name, kb_s=kb_s
        )


# --- interfaces -----------------------------------------------------------------------------


def interfaces_allocate(*, desktop: Desktop) -> list[DesktopInterface]:
    """The desktop's NICs, one per network of its template (inside the desktop's own
    transaction): a unique MAC each, and a free address of the network's range (bridged
    networks too: the guard pins each desktop to its address). The row lock on the
    network and the unique (network, ip) constraint keep two launches off one address."""
    made = []
    links = TemplateNetwork.objects.filter(template=desktop.template).select_related("network")
    with transaction.atomic():  # the desktop's own, when it calls; the row lock needs one
        for link in links:
            network = Network.objects.select_for_update().get(pk=link.network_id)
            interface = DesktopInterface(
                desktop=desktop, network=network, position=link.position,
                ip=_free_address(network),
            )  # fmt: skip
            _save_with_new_mac(interface)
            made.append(interface)
    return made


def _save_with_new_mac(interface: DesktopInterface) -> None:
    gateway = gateway_mac(libvirt_network_name(interface.network))  # the bridge's own
    for _ in range(8):
        interface.mac = f"{MAC_PREFIX}:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if interface.mac == gateway:
            continue
        try:
            with transaction.atomic():
                interface.save()
            return
        except IntegrityError:
            if not DesktopInterface.objects.filter(mac=interface.mac).exists():
                raise
    raise NetworkInvalid("No free MAC address could be found; try again.")


def _free_address(network: Network) -> str | None:
    if not network.subnet:  # a bridged network from before subnets: its desktops unpinned
        return None
    addressing = _addressing(network)
    taken = set(DesktopInterface.objects.filter(network=network).values_list("ip", flat=True))
    start, end = (
        int(ipaddress.IPv4Address(a)) for a in (addressing.dhcp_start, addressing.dhcp_end)
    )
    for number in range(start, end + 1):
        candidate = str(ipaddress.IPv4Address(number))
        if candidate not in taken:
            return candidate
    raise NetworkInvalid(f"Network {network.name} has no free address left in its DHCP range.")


def interfaces_release(*, desktop: Desktop) -> None:
    """A deleted desktop gives its MACs and addresses back (its hosts drop the DHCP
    entries on their next boot or reconcile)."""
    DesktopInterface.objects.filter(desktop=desktop).delete()


def interfaces_prepare(*, desktop: Desktop, host: Host) -> tuple[InterfaceSpec, ...]:
    """Make sure the desktop's networks are up on `host` (with its DHCP entry), and return
    its NICs for the domain (run by the host's worker, before a define, boot or move)."""
    interfaces = list(desktop.interfaces.select_related("network"))
    if not interfaces:
        return ()
    networks_ensure(host=host, networks=[i.network for i in interfaces])
    bandwidth = desktop.template.bandwidth_kb_s
    return tuple(
        InterfaceSpec(
            network=libvirt_network_name(i.network),
            mac=i.mac,
            filter=guard_filter_name(i.network),
            ip=i.ip,
            isolated=i.network.isolate_desktops,
            bandwidth_kb_s=bandwidth,
        )
        for i in interfaces
    )


# --- networks on the hosts ------------------------------------------------------------------


def network_spec(
    *, network: Network, host: Host, gateways: Iterable[str] = (),
    management: Sequence[str] | None = None,
) -> NetworkSpec:  # fmt: skip
    """The libvirt network and guard of `network` on `host`. The guard drops packets to
    the gateway (but DHCP, DNS and the allowed ports), to the management plane
    (`management`, by default `egress.management_plane()`: every host, the central
    services, link-local), to the gateways of the host's other networks (`gateways`) and
    to DESKTOP_EGRESS_DENY (but DESKTOP_EGRESS_ALLOW); see docs/networks.md."""
    addressing = network_addressing(network)
    own_gateway = addressing.gateway if addressing else None
    if management is None:
        management = management_plane()
    blocked = [a for a in (host.console_address, _uri_address(host.uri), *gateways, *management)
               if a and a != own_gateway and not _loopback_address(a)]  # fmt: skip
    hosts: tuple[tuple[str, str], ...] = ()
    if addressing is not None:
        rows = DesktopInterface.objects.filter(network=network, ip__isnull=False).exclude(
            desktop__status=DesktopStatus.DELETED
        )
        hosts = tuple(sorted((mac, str(ip)) for mac, ip in rows.values_list("mac", "ip")))
    return NetworkSpec(
        name=libvirt_network_name(network),
        filter_name=guard_filter_name(network),
        mode=network.mode,
        gateway=own_gateway,
        prefix_length=addressing.prefix_length if addressing else None,
        dhcp_start=addressing.dhcp_start if addressing else None,
        dhcp_end=addressing.dhcp_end if addressing else None,
        hosts=hosts,
        bridge=network.bridge or None,
        gateway_ports=tuple(network.gateway_ports),
        blocked_addresses=tuple(dict.fromkeys(blocked)),
        subnet=network.subnet or None,
        isolate_desktops=network.isolate_desktops,
        allowed_ranges=egress_allowed(),
        denied_ranges=egress_denied(),
    )


def _loopback_address(address: str) -> bool:
    """A single loopback address (a host's console on 127.0.0.1) is never a desktop's
    target anyway; the whole range (ALWAYS_DENIED) stays, for kernels that route it."""
    return address.startswith("127.") and "/" not in address


def _uri_address(uri: str) -> str | None:
    host = urlsplit(uri).hostname
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def _all_gateways() -> list[str]:
    result = []
    for network in Network.objects.exclude(mode=NetworkMode.BRIDGE):
        addressing = network_addressing(network)
        if addressing is not None:
            result.append(addressing.gateway)
    return result


def networks_ensure(*, host: Host, networks: Iterable[Network] | None = None) -> list[str]:
    """Create or repair networks (all of them by default) on `host`; their libvirt names."""
    chosen = list(Network.objects.all() if networks is None else networks)
    gateways, management = _all_gateways(), management_plane()
    done = []
    for network in chosen:
        _network_ensure_locked(network=network, host=host, gateways=gateways, management=management)
        done.append(libvirt_network_name(network))
    return done


def _network_ensure_locked(
    *, network: Network, host: Host, gateways: list[str], management: Sequence[str]
) -> None:
    """One worker at a time prepares a network on a host (`network_lock` says why), from
    the DHCP host entries read under the lock: read before it, a slower worker would put
    back an older list and drop a desktop started meanwhile. A network busy for too long
    is a passing error (the task retries)."""
    try:
        with network_lock(network.pk, host.pk):
            spec = network_spec(
                network=network, host=host, gateways=gateways, management=management
            )
            hypervisor_for(host).ensure_network(spec)
    except NetworkBusy:
        raise HypervisorError(
            f"network {network.name} on host {host.name} is being prepared by another task",
            permanent=False,
        ) from None


def networks_reconcile(*, host: Host) -> tuple[list[str], list[str]]:
    """Reconcile's part: every network defined, active and current on `host` (a missing or
    stopped one is repaired), and our prefix's networks that the portal no longer has
    removed. Returns (names removed, errors): a network that fails is logged and reported,
    and the others are still done."""
    hypervisor = hypervisor_for(host)
    gateways, management = _all_gateways(), management_plane()
    errors = []
    for network in Network.objects.all():
        try:
            _network_ensure_locked(
                network=network, host=host, gateways=gateways, management=management
            )
        except HypervisorError as exc:
            log.warning("network %s on host %s: %s", network.name, host.name, exc.message)
            errors.append(exc.message)
    prefix = f"{name_prefix()}net-"
    wanted = {libvirt_network_name(n) for n in Network.objects.all()}
    removed = []
    for name in hypervisor.list_network_names(prefix=prefix):
        if name not in wanted:
            filter_name = name_prefix() + "guard-" + name.removeprefix(prefix)
            hypervisor.remove_network(name=name, filter_name=filter_name)
            removed.append(name)
    return removed, errors


def interfaces_refresh(*, host: Host) -> int:
    """Store the addresses libvirt's DHCP leases show for the interfaces of `host`'s
    desktops (the heartbeat calls this); returns how many rows changed."""
    rows = list(
        DesktopInterface.objects.filter(desktop__host=host)
        .exclude(desktop__status=DesktopStatus.DELETED)
        .select_related("network", "desktop")
    )
    if not rows:
        return 0
    hypervisor = hypervisor_for(host)
    leases: dict[str, list[str]] = {}
    for network in {row.network for row in rows}:
        try:
            found = hypervisor.network_leases(name=libvirt_network_name(network))
        except HypervisorError as exc:
            log.info("no leases of %s on %s: %s", network.name, host.name, exc.message)
            continue
        for lease in found:
            leases.setdefault(lease.mac, []).append(lease.ip)
    changed = 0
    for row in rows:
        addresses = sorted(leases.get(row.mac.lower(), []))
        if not addresses and _keeps_fixed_address(row):
            continue
        if addresses != row.addresses:
            DesktopInterface.objects.filter(pk=row.pk).update(
                addresses=addresses, addresses_at=timezone.now()
            )
            push_desktop_changed(desktop_id=row.desktop_id)
            changed += 1
    return changed


def _keeps_fixed_address(row: DesktopInterface) -> bool:
    """A running desktop that moved here keeps its fixed address, though this host's
    dnsmasq has no lease for it until the guest renews (it then answers with the same
    address: every host has the DHCP host entry)."""
    return (
        row.ip is not None
        and row.addresses == [row.ip]
        and row.desktop.status in (DesktopStatus.RUNNING, DesktopStatus.MIGRATING)
    )
