"""Networks without guests: the API's answers, the services' rules (addresses, MACs, in-use
refusals), the domain and network XML, and the network life cycle on libvirt's test driver
(test:///default has networks, but no nwfilter driver). The guests' segmentation is
tests/fleet/test_networks_lab.py, on a lab host."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import libvirt
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import DesktopFactory
from vms.hypervisor import DomainSpec, GraphicsType, InterfaceSpec, get_hypervisor
from vms.hypervisor import xml as vxml
from vms.models import AuditEvent, DesktopInterface, Network
from vms.services.desktops import desktop_create
from vms.services.networks import (
    interfaces_allocate,
    network_create,
    network_spec,
    networks_ensure,
    networks_reconcile,
    template_networks_set,
)

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


def test_the_guard_lets_dhcp_dns_and_allowed_ports_through_and_drops_the_rest(
    admin_user_, fake_host
) -> None:
    iso = network_create(actor=admin_user_, **ISO)
    network_create(actor=admin_user_, name="nat", mode="nat", subnet="10.82.0.0/24")
    fake_host.console_address = "10.213.1.2"
    spec = network_spec(network=iso, host=fake_host, gateways=["10.81.0.1", "10.82.0.1"])
    root_xml, chain_xml = vxml.build_guard_filter_xml(spec)
    root = ET.fromstring(root_xml)  # noqa: S314
    assert [r.get("filter") for r in root.findall("filterref")] == [
        f"{spec.filter_name}-ipv4",
        "clean-traffic",
    ]
    rules = [(r.get("action"), r.find("ip").attrib) for r in ET.fromstring(chain_xml)]  # noqa: S314
    passes = [(m.get("dstipaddr"), m.get("protocol"), m.get("dstportstart"))
              for action, m in rules if action == "return"]  # fmt: skip
    assert passes == [(None, "udp", "67"), ("10.81.0.1", "udp", "53"),
                      ("10.81.0.1", "tcp", "53"), ("10.81.0.1", "tcp", "8080")]  # fmt: skip
    drops = [m["dstipaddr"] for action, m in rules if action == "drop"]
    assert drops == ["10.81.0.1", "10.213.1.2", "10.82.0.1"]


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
