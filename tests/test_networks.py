"""Networks without guests: the API's answers, the services' rules (addresses, MACs, in-use
refusals), the domain and network XML, and the network life cycle on libvirt's test driver
(test:///default has networks, but no nwfilter driver). The guests' segmentation is
tests/fleet/test_networks_lab.py, on a lab host."""

from __future__ import annotations

import ipaddress
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.concurrency import outcomes_at_once
from tests.factories import DesktopFactory
from vms.hypervisor import DomainSpec, GraphicsType, InterfaceSpec, NetworkSpec, get_hypervisor
from vms.hypervisor import xml as vxml
from vms.models import AuditEvent, DesktopInterface, Host, Network
from vms.services.core.errors import NetworkInvalid
from vms.services.desktops.requests import desktop_create
from vms.services.networks.desktop_networks import (
    guard_filter_name,
    guards_refresh,
    interfaces_allocate,
    interfaces_prepare,
    interfaces_release,
    network_create,
    network_spec,
    network_update,
    networks_ensure,
    networks_reconcile,
    template_networks_set,
)
from vms.services.networks.egress import management_addresses, management_plane

pytestmark = pytest.mark.django_db

ISO = {"name": "iso", "mode": "isolated", "subnet": "10.81.0.0/24", "gateway_ports": [8080]}


def test_admins_create_list_change_and_delete_networks(api_for, admin_user_) -> None:
    client = api_for(admin_user_)
    made = client.post("/api/networks/", ISO, format="json")
    assert made.status_code == 201, made.json()
    body = made.json()
    assert body["gateway"] == "10.81.0.1" and body["isolate_desktops"] is True
    assert client.get("/api/networks/").json()[0]["name"] == "iso"
    changed = client.patch(f"/api/networks/{body['id']}/", {"gateway_ports": [80, 8080]},
                           format="json")  # fmt: skip
    assert changed.status_code == 200 and changed.json()["gateway_ports"] == [80, 8080]
    assert client.delete(f"/api/networks/{body['id']}/").status_code == 204
    assert not Network.objects.exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"network.create", "network.update", "network.delete"} <= actions


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x", "mode": "nat", "subnet": "10.81.0.1/24"}, "no host bits"),
        ({"name": "x", "mode": "nat", "subnet": "8.8.8.0/24"}, "private"),
        ({"name": "x", "mode": "nat"}, "subnet"),
        ({"name": "x", "mode": "bridge"}, "bridge"),
        ({"name": "x", "mode": "vlan", "subnet": "10.9.0.0/24"}, "valid choice"),
        (
            {"name": "x", "mode": "nat", "subnet": "10.81.0.0/24", "dhcp_start": "10.9.9.9"},
            "subnet",
        ),
        ({"name": "x", "mode": "nat", "subnet": "10.9.0.0/24", "gateway_ports": [0]}, "1"),
        ({"name": "x y", "mode": "nat", "subnet": "10.9.0.0/24"}, "slug"),
        ({"name": "x", "mode": "nat", "subnet": "10.9.0.0/24", "color": "red"}, "Unknown"),
    ],
)
def test_bad_networks_get_a_clear_400(api_for, admin_user_, body, words) -> None:
    answer = api_for(admin_user_).post("/api/networks/", body, format="json")
    assert answer.status_code == 400
    assert words.lower() in str(answer.json()).lower(), answer.json()


def test_overlapping_subnets_and_duplicate_names_are_refused(api_for, admin_user_) -> None:
    client = api_for(admin_user_)
    assert client.post("/api/networks/", ISO, format="json").status_code == 201
    again = client.post("/api/networks/", {**ISO, "name": "iso2", "subnet": "10.81.0.0/25"},
                        format="json")  # fmt: skip
    assert again.status_code == 400 and "overlaps" in again.json()["detail"]
    twin = client.post("/api/networks/", {**ISO, "subnet": "10.82.0.0/24"}, format="json")
    assert twin.status_code == 400 and "exists" in twin.json()["detail"]


def test_only_admins_reach_networks(api_for, employee, helpdesk_user) -> None:
    for user in (employee, helpdesk_user):
        assert api_for(user).get("/api/networks/").status_code == 403
        assert api_for(user).post("/api/networks/", ISO, format="json").status_code == 403


def test_a_template_gets_networks_in_order_and_a_network_in_use_stays(
    api_for, admin_user_, employee, fake_template
) -> None:
    client = api_for(admin_user_)
    one = network_create(actor=admin_user_, **ISO)
    two = network_create(actor=admin_user_, name="nat", mode="nat", subnet="10.82.0.0/24")
    url = f"/api/templates/{fake_template.pk}/"
    answer = client.patch(url, {"networks": [two.pk, one.pk], "bandwidth_kb_s": 1000},
                          format="json")  # fmt: skip
    assert answer.status_code == 200, answer.json()
    assert answer.json()["networks"] == [two.pk, one.pk]
    assert answer.json()["bandwidth_kb_s"] == 1000
    assert client.patch(url, {"networks": [999]}, format="json").status_code == 400
    assert client.patch(url, {"networks": "x"}, format="json").status_code == 400
    assert api_for(employee).patch(url, {"networks": []}, format="json").status_code == 403
    refused = client.delete(f"/api/networks/{one.pk}/")
    assert refused.status_code == 409 and fake_template.name in refused.json()["detail"]
    reshaped = client.patch(f"/api/networks/{one.pk}/", {"subnet": "10.83.0.0/24"},
                            format="json")  # fmt: skip
    assert reshaped.status_code == 409


def test_desktops_get_stable_unique_macs_and_addresses_of_the_range(
    admin_user_, employee, fake_template, settings
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    iso = network_create(actor=admin_user_, **{**ISO, "dhcp_start": "10.81.0.10"})
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[iso.pk])
    desktops = [DesktopFactory(owner=employee, template=fake_template) for _ in range(3)]
    for desktop in desktops:
        interfaces_allocate(desktop=desktop)
    rows = list(DesktopInterface.objects.order_by("ip"))
    assert [r.ip for r in rows] == ["10.81.0.10", "10.81.0.11", "10.81.0.12"]
    assert len({r.mac for r in rows}) == 3
    assert all(re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", r.mac) for r in rows)


def test_the_desktop_record_lists_its_interfaces_in_one_query_for_many(
    api_for, admin_user_, employee, fake_template
) -> None:
    iso = network_create(actor=admin_user_, **ISO)
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[iso.pk])
    client = api_for(employee)
    first = DesktopFactory(owner=employee, template=fake_template)
    interfaces_allocate(desktop=first)
    DesktopInterface.objects.update(addresses=["10.81.0.2"])
    with CaptureQueriesContext(connection) as few:
        listed = client.get("/api/desktops/").json()
    assert listed[0]["interfaces"] == [{"network": iso.pk, "network_name": "iso",
        "mac": first.interfaces.get().mac, "addresses": ["10.81.0.2"]}]  # fmt: skip
    for _ in range(5):
        interfaces_allocate(desktop=DesktopFactory(owner=employee, template=fake_template))
    with CaptureQueriesContext(connection) as many:
        client.get("/api/desktops/")
    assert len(many) == len(few)


def test_the_domain_has_a_guarded_virtio_nic_per_network() -> None:
    nic = InterfaceSpec(network="p-net-iso", mac="52:54:00:01:02:03", filter="p-guard-iso",
                        ip="10.81.0.5", isolated=True, bandwidth_kb_s=1000)  # fmt: skip
    root = ET.fromstring(vxml.build_domain_xml(spec_for(interfaces=(nic,))))  # noqa: S314
    (el,) = root.findall("./devices/interface")
    assert el.get("type") == "network" and el.find("source").get("network") == "p-net-iso"
    assert el.find("model").get("type") == "virtio"
    assert el.find("mac").get("address") == "52:54:00:01:02:03"
    assert el.find("port").get("isolated") == "yes"
    ref = el.find("filterref")
    assert ref.get("filter") == "p-guard-iso"
    assert ref.find("parameter").attrib == {"name": "IP", "value": "10.81.0.5"}
    assert el.find("bandwidth/inbound").get("average") == "1000"
    assert el.find("bandwidth/outbound").get("average") == "1000"
    bare = ET.fromstring(vxml.build_domain_xml(spec_for()))  # noqa: S314
    assert bare.findall("./devices/interface") == []


def _chain_rules(spec) -> list[tuple[str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    root_xml, chain_xml = vxml.build_guard_filter_xml(spec)
    root = ET.fromstring(root_xml)  # noqa: S314
    assert [r.get("filter") for r in root.findall("filterref")] == [
        f"{spec.filter_name}.ipv4",
        "clean-traffic",
    ]
    chain = ET.fromstring(chain_xml)  # noqa: S314
    priorities = [int(r.get("priority")) for r in chain]
    assert priorities == sorted(set(priorities))  # the first match decides, in this order
    return [(r.get("action"), dict(r.find("ip").attrib)) for r in chain]


def _target(match: dict[str, str]) -> str | None:
    address = match.get("dstipaddr")
    mask = match.get("dstipmask")
    return f"{address}/{mask}" if address and mask else address


def test_the_guard_denies_the_management_plane_and_lets_dhcp_dns_and_allowed_ports_through(
    admin_user_, fake_host, settings
) -> None:
    settings.DESKTOP_EGRESS_DENY = [ipaddress.IPv4Network("10.213.0.0/16")]
    settings.DESKTOP_EGRESS_ALLOW = [ipaddress.IPv4Network("10.213.240.2/32")]
    iso = network_create(actor=admin_user_, **ISO)
    network_create(actor=admin_user_, name="nat", mode="nat", subnet="10.82.0.0/24")
    fake_host.console_address = "10.213.1.2"
    spec = network_spec(network=iso, host=fake_host, gateways=["10.81.0.1", "10.82.0.1"],
                        management=["10.213.2.2", "169.254.0.0/16"])  # fmt: skip
    rules = _chain_rules(spec)
    seen = [(action, _target(m), m.get("protocol"), m.get("srcportstart") or
             m.get("dstportstart")) for action, m in rules]  # fmt: skip
    assert seen == [
        ("drop", None, "udp", "67"),  # a desktop answering DHCP (source port 67)
        ("return", "255.255.255.255", "udp", "67"),  # DHCP: broadcast and the gateway only
        ("return", "10.81.0.1", "udp", "67"),
        ("drop", None, "udp", "67"),
        ("return", "10.81.0.1", "udp", "53"),
        ("return", "10.81.0.1", "tcp", "53"),
        ("return", "10.81.0.1", "tcp", "8080"),
        ("drop", "10.81.0.1", None, None),  # the rest of the gateway
        ("drop", "10.213.1.2", None, None),  # the management plane
        ("drop", "10.82.0.1", None, None),
        ("drop", "10.213.2.2", None, None),
        ("drop", "169.254.0.0/16", None, None),
        ("drop", "10.81.0.0/24", None, None),  # isolated desktops: not even via the gateway
        ("return", "10.213.240.2", None, None),  # DESKTOP_EGRESS_ALLOW
        ("drop", "10.213.0.0/16", None, None),  # DESKTOP_EGRESS_DENY
    ]
    shared = network_create(actor=admin_user_, **{**ISO, "name": "open", "subnet": "10.83.0.0/24",
                            "isolate_desktops": False})  # fmt: skip
    open_spec = network_spec(network=shared, host=fake_host, management=[])
    assert ("return", {"dstipaddr": "10.83.0.0", "dstipmask": "24"}) in _chain_rules(open_spec)


def test_every_hosts_addresses_and_the_central_services_are_the_management_plane(
    admin_user_, fake_host, settings, monkeypatch
) -> None:
    """Host names are resolved. No name resolves to a routable address on this machine
    without sending a DNS query out (the network rule), so the resolver answers for the
    test's names only; every other name goes to the real one."""
    real = socket.getaddrinfo
    names = {"hv2.example.test": "192.0.2.20", "redis.example.test": "192.0.2.30",
             "db.example.test": "192.0.2.40"}  # fmt: skip

    def resolve(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    Host.objects.create(name="hv2", uri="qemu+tls://hv2.example.test/system",
                        console_address="192.0.2.21", storage_pool="p")  # fmt: skip
    settings.REDIS_URL = "redis://:secret@redis.example.test:6379/0"
    settings.DATABASES = {"default": {**settings.DATABASES["default"],
                                      "ENGINE": "django.db.backends.postgresql",
                                      "HOST": "db.example.test"}}  # fmt: skip
    settings.TRUSTED_PROXIES = [ipaddress.ip_network("192.0.2.64/28"),
                                ipaddress.ip_network("fd00::/8")]  # fmt: skip
    settings.SPICE_PROXY_BIND = ("192.0.2.50", 6082)
    settings.SPICE_PROXY_URL = "http://192.0.2.51:6082"
    found = set(management_addresses())
    assert {"192.0.2.20", "192.0.2.21", "192.0.2.30", "192.0.2.40", "192.0.2.64/28",
            "192.0.2.50", "192.0.2.51", "169.254.0.0/16", "127.0.0.0/8"} <= found  # fmt: skip
    iso = network_create(actor=admin_user_, **ISO)
    assert {"192.0.2.20", "192.0.2.30", "169.254.0.0/16", "127.0.0.0/8"} <= set(
        network_spec(network=iso, host=fake_host).blocked_addresses
    )


@pytest.mark.libvirt  # opens qemu:///system itself
def test_guard_filter_names_never_collide_and_the_old_chains_go(admin_user_) -> None:
    """`x-ipv4`'s guard and `x`'s chain had one name. Now the chain is `<root>.ipv4` (a
    slug has no dot); removing `x` removes its chain of the old naming, never `x-ipv4`'s
    root filter. On the machine's libvirtd: filters only, no network is started."""
    x = network_create(actor=admin_user_, **ISO)
    x4 = network_create(actor=admin_user_, **{**ISO, "name": "iso-ipv4", "subnet": "10.85.0.0/24"})
    names = set()
    for network in (x, x4):
        root_xml, chain_xml = vxml.build_guard_filter_xml(network_spec(network=network,
            host=Host(name="h", uri="test:///default"), management=[]))  # fmt: skip
        names |= {ET.fromstring(root_xml).get("name"), ET.fromstring(chain_xml).get("name")}  # noqa: S314
    assert len(names) == 4
    conn = libvirt.open("qemu:///system")
    root, legacy_chain = guard_filter_name(x), guard_filter_name(x) + "-ipv4"
    other_root = guard_filter_name(x4)
    assert legacy_chain == other_root  # the old collision
    try:
        conn.nwfilterDefineXML(f"<filter name='{legacy_chain}' chain='ipv4-guard'/>")
        get_hypervisor("qemu:///system").remove_network(name="dpe-none", filter_name=root)
        with pytest.raises(libvirt.libvirtError):
            conn.nwfilterLookupByName(legacy_chain)  # the old chain went
        conn.nwfilterDefineXML(f"<filter name='{other_root}' chain='root'/>")
        get_hypervisor("qemu:///system").remove_network(name="dpe-none", filter_name=root)
        assert conn.nwfilterLookupByName(other_root).name() == other_root  # kept
    finally:
        for name in (legacy_chain, root):
            try:
                conn.nwfilterLookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
        conn.close()


def test_isolated_networks_forward_no_dns_upstream() -> None:
    spec = NetworkSpec(name="p-net-iso", filter_name="p-guard-iso", mode="isolated",
                       gateway="10.81.0.1", prefix_length=24)  # fmt: skip
    assert not vxml.forwards_dns(vxml.build_network_xml(spec))
    nat = NetworkSpec(name="p-net-nat", filter_name="p-guard-nat", mode="nat",
                      gateway="10.82.0.1", prefix_length=24)  # fmt: skip
    assert vxml.forwards_dns(vxml.build_network_xml(nat))


def test_networks_are_defined_started_repaired_and_removed_on_a_host(
    admin_user_, fake_host
) -> None:
    iso = network_create(actor=admin_user_, **ISO)
    hypervisor = get_hypervisor(fake_host.uri)
    name = networks_ensure(host=fake_host)[0]
    try:
        conn_net = _test_driver_network(name)
        assert conn_net.isActive() and conn_net.autostart()
        conn_net.destroy()  # stopped behind the portal's back: reconcile starts it again
        assert networks_reconcile(host=fake_host) == ([], [])
        assert _test_driver_network(name).isActive()
        iso.delete()
        assert networks_reconcile(host=fake_host) == ([name], [])
        assert name not in hypervisor.list_network_names(prefix="")
    finally:
        if name in hypervisor.list_network_names(prefix=""):
            hypervisor.remove_network(name=name, filter_name="unused")


def _test_driver_network(name: str):  # type: ignore[no-untyped-def]
    # test:///default is one driver state per process: this connection sees the portal's.
    return libvirt.open("test:///default").networkLookupByName(name)


def spec_for(**fields: object) -> DomainSpec:
    base: dict[str, object] = dict(name="p-1", vcpus=1, memory_mib=128, disk_path="/d.qcow2",
        graphics=GraphicsType.vnc, virt_type="qemu", title="t", description="",
        desktop_id="1", console_password="secret")  # fmt: skip
    return DomainSpec(**{**base, **fields})  # type: ignore[arg-type]


def test_a_launch_allocates_the_interfaces_with_the_desktop(
    admin_user_, employee, fake_template, settings
) -> None:
    iso = network_create(actor=admin_user_, **ISO)
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[iso.pk])
    desktop = desktop_create(user=employee, template_id=fake_template.pk)
    assert desktop.interfaces.get().ip == "10.81.0.2"


def test_bridged_networks_pin_each_desktop_to_an_address_of_their_subnet(
    admin_user_, employee, fake_template
) -> None:
    """The guard's IP parameter is the desktop's address, so it cannot claim another (the
    LAN's router first) by IP or ARP; tests/fleet/test_egress_lab.py sends the spoofs."""
    with pytest.raises(NetworkInvalid, match="subnet"):
        network_create(actor=admin_user_, name="lan", mode="bridge", bridge="br0")
    lan = network_create(actor=admin_user_, name="lan", mode="bridge", bridge="br0",
                         subnet="10.90.0.0/24", dhcp_start="10.90.0.100",
                         dhcp_end="10.90.0.101")  # fmt: skip
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[lan.pk])
    first, second, third = (DesktopFactory(owner=employee, template=fake_template)
                            for _ in range(3))  # fmt: skip
    assert [i.ip for d in (first, second) for i in interfaces_allocate(desktop=d)] == [
        "10.90.0.100",
        "10.90.0.101",
    ]
    with pytest.raises(NetworkInvalid, match="no free address"):
        interfaces_allocate(desktop=third)
    interfaces_release(desktop=first)
    assert interfaces_allocate(desktop=third)[0].ip == "10.90.0.100"  # given back
    spec = network_spec(network=lan, host=Host(name="h", uri="test:///default"), management=[])
    rules = _chain_rules(spec)
    assert ("return", {"dstipaddr": "10.90.0.0", "dstipmask": "24", "protocol": "udp",
                       "dstportstart": "67", "dstportend": "67"}) in rules  # fmt: skip
    assert spec.gateway is None and spec.hosts == ()  # the LAN's own router and DHCP


def test_a_bridged_network_from_before_subnets_gets_one_and_pins_its_desktops(
    admin_user_, employee, fake_template
) -> None:
    lan = Network.objects.create(name="lan", mode="bridge", bridge="br0")  # as it was
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[lan.pk])
    desktop = DesktopFactory(owner=employee, template=fake_template)
    assert interfaces_allocate(desktop=desktop)[0].ip is None
    network_update(actor=admin_user_, network=lan, subnet="10.90.0.0/24")
    assert desktop.interfaces.get().ip == "10.90.0.2"


@pytest.mark.django_db(transaction=True)
def test_concurrent_launches_never_share_a_bridged_address(
    admin_user_, employee, fake_template
) -> None:
    """12 launches at once on a range of 10 addresses: 10 distinct addresses, 2 refusals
    (the network's row lock, on PostgreSQL)."""
    assert connection.vendor == "postgresql"
    lan = network_create(actor=admin_user_, name="lan", mode="bridge", bridge="br0",
                         subnet="10.90.0.0/24", dhcp_start="10.90.0.10",
                         dhcp_end="10.90.0.19")  # fmt: skip
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[lan.pk])
    desktops = [DesktopFactory(owner=employee, template=fake_template) for _ in range(12)]

    def allocate(desktop: Any) -> Callable[[], str]:
        def call() -> str:
            with transaction.atomic():
                return str(interfaces_allocate(desktop=desktop)[0].ip)

        return call

    outcomes = outcomes_at_once([allocate(d) for d in desktops], refusals=(NetworkInvalid,))
    addresses = [o for o in outcomes if o != "refused"]
    assert len(addresses) == 10 and len(set(addresses)) == 10, outcomes
    assert outcomes.count("refused") == 2


def test_the_default_egress_deny_covers_the_lab_range() -> None:
    """The default DESKTOP_EGRESS_DENY (this test environment does not set it)."""
    from django.conf import settings as django_settings

    assert ipaddress.IPv4Network("10.213.0.0/16") in django_settings.DESKTOP_EGRESS_DENY


def test_the_management_plane_is_read_once_until_the_fleet_changes(fake_host) -> None:
    """Each host's reconcile builds every guard: the hosts are read once per fleet change
    (guards_refresh, which every change of a host's addresses calls), not once per host."""
    assert "192.0.2.77" not in management_plane()
    Host.objects.create(name="hv3", uri="qemu+tls://192.0.2.77/system",
                        console_address="192.0.2.78", storage_pool="p")  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        kept = management_plane()
    assert "192.0.2.77" not in kept and len(queries) == 0  # nothing said the fleet changed
    guards_refresh()
    assert {"192.0.2.77", "192.0.2.78"} <= set(management_plane())


@pytest.mark.libvirt  # the real libvirtd (its network update refuses a duplicate entry)
@pytest.mark.django_db(transaction=True)  # the racing calls use database connections of their own
def test_desktops_started_together_prepare_their_network_one_at_a_time(
    admin_user_, employee, fake_template, local_host, settings
) -> None:
    """Each start makes the network's DHCP host entries those of its desktops. Two at once
    read the same entries and both add the new ones, and libvirt refuses the second ("there
    is an existing dhcp host entry"): the desktop failed to start (seen on a lab host). The
    network is isolated: it has a bridge on this machine and sends nothing anywhere."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    iso = network_create(actor=admin_user_, **ISO)
    template_networks_set(actor=admin_user_, template=fake_template, network_ids=[iso.pk])
    hypervisor = get_hypervisor(local_host.uri)
    name = networks_ensure(host=local_host, networks=[iso])[0]
    try:
        desktops = [DesktopFactory(owner=employee, template=fake_template) for _ in range(6)]
        for desktop in desktops:
            interfaces_allocate(desktop=desktop)

        def prepare(desktop: Any) -> Callable[[], str]:
            return lambda: str(len(interfaces_prepare(desktop=desktop, host=local_host)))

        outcomes = outcomes_at_once([prepare(d) for d in desktops], refusals=())
        assert outcomes == ["1"] * len(desktops)
        with libvirt.open(local_host.uri) as conn:
            entries = vxml.parse_network_hosts(conn.networkLookupByName(name).XMLDesc(0))
        assert entries == {(i.mac, i.ip) for i in DesktopInterface.objects.all()}
    finally:
        hypervisor.remove_network(name=name, filter_name=guard_filter_name(iso))
