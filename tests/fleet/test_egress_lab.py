"""Desktop egress on lab hosts: what a guest on a portal network can and cannot reach,
probed from the guest's serial shell (busybox nc, traceroute, udhcpd).

Every target is inside a namespace the test made or a lab host's: host B's own address,
the lab bridge's address, and a namespace `dpe-egsvc` on the lab bridge with an allowed
service (10.213.240.2) and a listener standing in for Redis (10.213.240.3). A probe
"reaches" a TCP port when it connects or is refused (a refusal is an answer from the
target); a dropped packet times out.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt
import pytest

from tests.fixtures import wait_for_status
from tests.fleet.conftest import lab_dir, lab_namespace
from tests.guestshell import GuestShell, eth0_address, guest_shell
from vms.models import Desktop, Host, Template
from vms.services.desktops.requests import desktop_act, desktop_create
from vms.services.networks.desktop_networks import (
    guard_filter_name,
    libvirt_network_name,
    network_create,
    network_update,
    networks_ensure,
    template_networks_set,
)

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]

HERE = Path(__file__).parent
SVC_NAMESPACE = "dpe-egsvc"
ALLOWED, REDIS = "10.213.240.2", "10.213.240.3"  # in the lab range, which the guard denies
LAB_BRIDGE = "10.213.0.1"
DENY = "10.213.0.0/24,10.213.240.0/24"  # the bridge and the service namespace, not the hosts
NAT = {"name": "nat", "mode": "nat", "subnet": "10.82.0.0/24"}
NAT_GATEWAY = "10.82.0.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def service_namespace() -> Iterator[str]:
    """Namespace `dpe-egsvc` on the lab bridge (dplab0), with ALLOWED and REDIS."""
    subprocess.run(["ip", "netns", "del", SVC_NAMESPACE], capture_output=True, timeout=30)
    _ip("netns", "add", SVC_NAMESPACE)
    try:
        _ip("link", "add", SVC_NAMESPACE, "type", "veth", "peer", "name", "eth0", "netns",
            SVC_NAMESPACE)  # fmt: skip
        _ip("link", "set", SVC_NAMESPACE, "master", "dplab0", "up")
        for address in (ALLOWED, REDIS):
            _ip("-n", SVC_NAMESPACE, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", SVC_NAMESPACE, "link", "set", "eth0", "up")
        _ip("-n", SVC_NAMESPACE, "link", "set", "lo", "up")
        _ip("-n", SVC_NAMESPACE, "route", "add", "10.213.0.0/16", "dev", "eth0")
        yield SVC_NAMESPACE
    finally:
        _ip("netns", "del", SVC_NAMESPACE)  # the veth pair goes with it
        deadline = time.monotonic() + 10
        while _link_exists(SVC_NAMESPACE) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _link_exists(SVC_NAMESPACE)


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


@contextmanager
def services(namespace: str, specs: list[str]) -> Iterator[None]:
    """Test services (netservice.py) in `namespace`; stopped at the end."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, str(HERE / "netservice.py"), *specs],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# nc's -w 3 bounds its connect, yet a probe once printed nothing for 60 s (twice, right
# after isolation was turned on): `timeout` ends every probe in the guest after
# PROBE_END_S, and one that had to be ended (exit 143) was neither accepted nor refused.
# PROBE_S bounds how long a guest starved by a busy machine (TCG) may take to print the
# result (20 s was once not enough in a full suite run).
PROBE_END_S = 10
PROBE_S = 60


def _reaches(sh: GuestShell, address: str, port: int) -> bool:
    """Whether a TCP connection from the guest is answered: accepted or refused."""
    out = sh.run(f"timeout {PROBE_END_S} nc -w 3 {address} {port} </dev/null >/dev/null "
                 "2>/tmp/nc.err; echo rc=$?; cat /tmp/nc.err", timeout=PROBE_S)  # fmt: skip
    return "rc=0" in out or "refused" in out


def _greets(sh: GuestShell, address: str, port: int) -> bool:
    """Whether a netservice listener's greeting comes back."""
    return f"hello {port}" in sh.run(
        f"echo | timeout {PROBE_END_S} nc -w 3 {address} {port} 2>&1", timeout=PROBE_S,
        check=False,
    )  # fmt: skip


def _udp(sh: GuestShell, address: str, port: int) -> None:
    """One UDP datagram from the guest to `address`:`port` (busybox traceroute's first
    probe goes to its base port plus one; its TTL is enough to arrive)."""
    sh.run(f"traceroute -n -f 8 -m 8 -q 1 -w 1 -p {port - 1} {address} >/dev/null 2>&1",
           timeout=PROBE_S, check=False)  # fmt: skip


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _dhcp_answers(namespace: str, bridge: str) -> list[str]:
    """The servers that answer a DHCPDISCOVER sent on `bridge` (dhcpprobe.py)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, str(HERE / "dhcpprobe.py"), bridge,
         "4"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    lines = done.stdout.split()
    assert lines and lines[-1] == "done", (done.stdout, done.stderr)
    return lines[:-1]


def _bridge(uri: str, network: str) -> str:
    conn = libvirt.open(uri)
    try:
        return str(conn.networkLookupByName(network).bridgeName())
    finally:
        conn.close()


def _template_on(
    demo_template: Template, name: str, network_ids: list[int], actor: Any
) -> Template:
    template = Template.objects.create(name=name, base_image_path=demo_template.base_image_path,
                                       vcpus=1, memory_mib=128, disk_gib=1)  # fmt: skip
    template.assigned_groups.set(demo_template.assigned_groups.all())
    template_networks_set(actor=actor, template=template, network_ids=network_ids)
    return template


def _delete(desktops: list[Desktop], actor: Any) -> None:
    for desktop in desktops:
        desktop_act(actor=actor, desktop=desktop, action="delete", source_ip=None)
    for desktop in desktops:
        wait_for_status(desktop.pk, "deleted", timeout=90)


def test_a_desktop_reaches_its_gateway_and_allowed_addresses_and_nothing_of_the_management_plane(
    lab_hosts: Callable[[str], str], lab_host_joined: Callable[[str], Host], local_host: Host,
    demo_template: Template, employee: Any, admin_user_: Any, monkeypatch: pytest.MonkeyPatch,
    settings: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """High 1: on a NAT network of host A, a desktop reaches its gateway's DNS and an
    address of DESKTOP_EGRESS_ALLOW, and none of: host B's libvirtd (16509, 16514), VNC
    (5900) and incoming-migration (49152) ports, a Redis stand-in, the lab bridge's
    address. Host B joins the fleet while the desktop runs: the guards are refreshed and
    cut it off (DESKTOP_EGRESS_DENY is narrowed here so that only B's registration can).
    Low: it sends no DHCP request but to the gateway or broadcast, and answers no DHCP
    discover (a desktop running udhcpd)."""
    for name, value in (("DESKTOP_EGRESS_ALLOW", f"{ALLOWED}/32"), ("DESKTOP_EGRESS_DENY", DENY)):
        monkeypatch.setenv(name, value)  # the hosts' workers read them
        setattr(settings, name, [ipaddress.IPv4Network(v) for v in value.split(",")])
    Host.objects.filter(pk=local_host.pk).update(enabled=False)
    b_address = urlsplit(lab_hosts("labb")).hostname or ""  # up, not yet in the fleet
    host_a = lab_host_joined("laba")
    nat = network_create(actor=admin_user_, **NAT)
    template = _template_on(demo_template, "Demo on NAT", [nat.pk], admin_user_)
    udp_seen = tmp_path / "udp.log"
    udp_seen.touch(mode=0o666)
    joined: dict[str, bool] = {}
    with ExitStack() as stack:
        svc = stack.enter_context(service_namespace())
        stack.enter_context(services(svc, [f"{ALLOWED}:8080", f"{REDIS}:6379",
                                           f"{ALLOWED}:67:udp:{udp_seen}",
                                           f"{ALLOWED}:7000:udp:{udp_seen}"]))  # fmt: skip
        stack.enter_context(
            services(lab_namespace("labb"), [f"{b_address}:5900", f"{b_address}:49152"])
        )
        desktop = desktop_create(user=employee, template_id=template.pk)
        desktop = wait_for_status(desktop.pk, "running", timeout=180)
        assert desktop.host == host_a
        sh = stack.enter_context(guest_shell(host_a.uri, desktop.domain_name))
        eth0_address(sh)
        joined["B reached before it joined"] = _reaches(sh, b_address, 16509)
        host_b = lab_host_joined("labb")
        Host.objects.filter(pk=host_b.pk).update(enabled=False)  # no desktop goes there
        joined["B cut off once it joined"] = _becomes(lambda: not _reaches(sh, b_address, 16509))
        assert _reaches(sh, NAT_GATEWAY, 53)  # the gateway's DNS (TCP: no query leaves)
        assert _greets(sh, ALLOWED, 8080)  # DESKTOP_EGRESS_ALLOW, inside the denied range
        targets = {
            "host B libvirtd": (b_address, 16509),
            "host B libvirtd TLS": (b_address, 16514),
            "host B VNC": (b_address, 5900),
            "host B migration": (b_address, 49152),
            "Redis stand-in": (REDIS, 6379),
            "lab bridge": (LAB_BRIDGE, 16509),
            "host A itself": (host_a.console_address, 16509),
        }
        reached = [what for what, (address, port) in targets.items() if _reaches(sh, address, port)]
        # UDP: a datagram to port 7000 of the allowed address arrives; one to its port 67
        # (a DHCP request to anything but the gateway) does not.
        _udp(sh, ALLOWED, 7000)
        _udp(sh, ALLOWED, 67)
        udp_ports = sorted(line.split()[0] for line in _wait_lines(udp_seen, 1))
        # A desktop playing DHCP server: its offers never leave its port.
        sh.run("printf 'interface eth0\\nstart 10.82.0.200\\nend 10.82.0.210\\n"
               "lease_file /tmp/leases\\n' >/tmp/udhcpd.conf; touch /tmp/leases; "
               "udhcpd -a 100 /tmp/udhcpd.conf")  # fmt: skip
        answers = _dhcp_answers(
            lab_namespace("laba"), _bridge(host_a.uri, libvirt_network_name(nat))
        )
        desktop_ip = desktop.interfaces.get().ip
        still = _greets(sh, ALLOWED, 8080)  # the guard did not simply cut it off
    assert {
        **joined,
        "management plane reached": reached,
        "UDP ports that got a datagram": udp_ports,
        "the desktop answered DHCP": desktop_ip in answers,
        "the gateway answered DHCP": NAT_GATEWAY in answers,
        "allowed address still reached": still,
    } == {
        "B reached before it joined": True,
        "B cut off once it joined": True,
        "management plane reached": [],
        "UDP ports that got a datagram": ["7000"],
        "the desktop answered DHCP": False,
        "the gateway answered DHCP": True,
        "allowed address still reached": True,
    }
    _delete([desktop], employee)


def _wait_lines(path: Path, count: int, timeout: float = 10) -> list[str]:
    """The file's lines once it has `count` (the recorder appends as datagrams arrive);
    a little longer than that for any that follow."""
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    settle = time.monotonic() + 2
    while time.monotonic() < settle:  # a datagram in flight: the other probe's, if any
        time.sleep(0.2)
    return _lines(path)


def test_isolation_reaches_running_desktops_and_holds_through_the_gateway(
    lab_host_joined: Callable[[str], Host], local_host: Host, demo_template: Template,
    employee: Any, admin_user_: Any,
) -> None:  # fmt: skip
    """Low: two desktops of an isolated network booted with isolation off reach each
    other; turning `isolate_desktops` on cuts them apart at once (the guard, redefined on
    every host, reaches running desktops), also when each routes to the other through the
    gateway. The network's dnsmasq forwards no query upstream. The guard filters of the old
    naming go (a network named `iso-ipv4` had the same filter name as `iso`'s chain)."""
    Host.objects.filter(pk=local_host.pk).update(enabled=False)
    lab = lab_host_joined("laba")
    Host.objects.filter(pk=lab.pk).update(cpu_overcommit=4.0)
    iso = network_create(actor=admin_user_, name="iso", mode="isolated", subnet="10.81.0.0/24",
                         isolate_desktops=False)  # fmt: skip
    nat = network_create(actor=admin_user_, **NAT)  # its start lets the lab host forward
    legacy_chain = _define_legacy_guard(lab.uri, guard_filter_name(iso))
    networks_ensure(host=lab)
    found: dict[str, Any] = {"guard": _guard(lab.uri, guard_filter_name(iso), legacy_chain)}
    config = lab_dir("laba") / "lib" / "dnsmasq"
    for network in (iso, nat):
        words = (config / f"{libvirt_network_name(network)}.conf").read_text().split()
        found[f"{network.name} forwards DNS"] = "no-resolv" not in words

    template = _template_on(demo_template, "Demo isolated", [iso.pk], admin_user_)
    a = desktop_create(user=employee, template_id=template.pk)
    b = desktop_create(user=employee, template_id=template.pk)
    a, b = (wait_for_status(d.pk, "running", timeout=180) for d in (a, b))
    with ExitStack() as stack:
        sa, sb = (stack.enter_context(guest_shell(lab.uri, d.domain_name)) for d in (a, b))
        ip_a, ip_b = eth0_address(sa), eth0_address(sb)
        for sh in (sa, sb):  # no ICMP redirect may turn a route through the gateway direct
            sh.run("for f in /proc/sys/net/ipv4/conf/*/accept_redirects; do echo 0 >$f; done")
        sb.run("(while true; do echo hello 7000 | nc -l -p 7000 >/dev/null 2>&1; done &)")
        # Not isolated: they reach each other, once B's listener is up and each port's
        # clean-traffic filter has learned its guest's address (until then it drops IP).
        assert _becomes(lambda: _greets(sa, ip_b, 7000))

        network_update(actor=admin_user_, network=iso, isolate_desktops=True)
        found["cut apart at once"] = _becomes(lambda: not _reaches(sa, ip_b, 7000))
        sa.run(f"ip route add {ip_b}/32 via 10.81.0.1")
        sb.run(f"ip route add {ip_a}/32 via 10.81.0.1")
        found["apart through the gateway"] = not _reaches(sa, ip_b, 7000)
        network_update(actor=admin_user_, network=iso, isolate_desktops=False)
        found["together again"] = _becomes(lambda: _greets(sa, ip_b, 7000))
    assert found == {
        "guard": ([f"{guard_filter_name(iso)}.ipv4", "clean-traffic"], "old chain gone"),
        "iso forwards DNS": False,
        "nat forwards DNS": True,
        "cut apart at once": True,
        "apart through the gateway": True,
        "together again": True,
    }
    _delete([a, b], employee)


def _becomes(condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Whether `condition` holds within `timeout` (the guard is redefined by the host's
    worker, which then updates the running desktops' rules)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


def _define_legacy_guard(uri: str, root: str) -> str:
    """The guard as the old naming made it: root `<name>` over chain `<name>-ipv4`."""
    chain = f"{root}-ipv4"
    conn = libvirt.open(uri)
    try:
        conn.nwfilterDefineXML(f"<filter name='{chain}' chain='ipv4-guard' priority='-700'/>")
        conn.nwfilterDefineXML(f"<filter name='{root}' chain='root'><filterref filter='{chain}'/>"
                               "<filterref filter='clean-traffic'/></filter>")  # fmt: skip
    finally:
        conn.close()
    return chain


def _guard(uri: str, root: str, legacy_chain: str) -> tuple[list[str | None], str]:
    """The filters the guard's root takes in, and whether the old chain is gone."""
    conn = libvirt.open(uri)
    try:
        refs = ET.fromstring(conn.nwfilterLookupByName(root).XMLDesc(0))  # noqa: S314
        gone = legacy_chain not in conn.listNWFilters()
        return [r.get("filter") for r in refs.findall("filterref")], (
            "old chain gone" if gone else "old chain kept"
        )
    finally:
        conn.close()


LAN_BRIDGE, ROUTER = "dpebr0", "10.90.0.1"  # a LAN's bridge and router, in the lab host


@contextmanager
def lan_in_lab_host(namespace: str) -> Iterator[None]:
    """Bridge `dpebr0` in the lab host's namespace with the router's address on it; the
    router takes in what gratuitous ARP announces (arp_accept), as many LAN routers do."""
    _ip("-n", namespace, "link", "add", LAN_BRIDGE, "type", "bridge")
    try:
        _ip("-n", namespace, "addr", "add", f"{ROUTER}/24", "dev", LAN_BRIDGE)
        _ip("-n", namespace, "link", "set", LAN_BRIDGE, "up")
        subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw",
                        f"net.ipv4.conf.{LAN_BRIDGE}.arp_accept=1"], check=True,
                       timeout=30)  # fmt: skip
        yield
    finally:
        _ip("-n", namespace, "link", "del", LAN_BRIDGE)


def _router_knows(namespace: str, address: str) -> str:
    """The router's neighbour entry for `address` (empty when it has none)."""
    return subprocess.run(["ip", "-n", namespace, "neigh", "show", address, "dev", LAN_BRIDGE],
                          capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip


def test_a_desktop_on_a_bridged_network_is_pinned_to_its_address(
    lab_host_joined: Callable[[str], Host], local_host: Host, demo_template: Template,
    employee: Any, admin_user_: Any,
) -> None:  # fmt: skip
    """Medium 8: a bridged network's desktop gets a fixed address of the LAN's subnet and
    the guard pins it: an ARP reply or announcement claiming another address, and packets
    from another source address, go nowhere; its own address works."""
    Host.objects.filter(pk=local_host.pk).update(enabled=False)
    lab = lab_host_joined("laba")
    namespace = lab_namespace("laba")
    found: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.enter_context(lan_in_lab_host(namespace))
        stack.enter_context(services(namespace, [f"{ROUTER}:8080"]))
        lan = network_create(actor=admin_user_, name="lan", mode="bridge", bridge=LAN_BRIDGE,
                             subnet="10.90.0.0/24", dhcp_start="10.90.0.100",
                             dhcp_end="10.90.0.120", isolate_desktops=False)  # fmt: skip
        template = _template_on(demo_template, "Demo on the LAN", [lan.pk], admin_user_)
        desktop = desktop_create(user=employee, template_id=template.pk)
        found["address the portal pinned"] = pinned = desktop.interfaces.get().ip
        own = pinned or "10.90.0.100"  # (without a pinned address, the spoofs still run)
        desktop = wait_for_status(desktop.pk, "running", timeout=180)
        sh = stack.enter_context(guest_shell(lab.uri, desktop.domain_name))
        sh.run("killall udhcpc 2>/dev/null; ip addr flush dev eth0; true")  # no DHCP here
        # The guest's first packets claim another address of the LAN, by ARP reply and
        # announcement (before it ever sent from its own).
        sh.run("arping -A -c 2 -s 10.90.0.50 -I eth0 10.90.0.1 >/dev/null 2>&1; "
               "arping -U -c 2 -s 10.90.0.50 -I eth0 10.90.0.50 >/dev/null 2>&1; true",
               timeout=30)  # fmt: skip
        found["router learned the claimed address"] = _router_knows(namespace, "10.90.0.50")
        sh.run(f"ip addr add {own}/24 dev eth0")
        found["own address reaches the router"] = _greets(sh, ROUTER, 8080)
        sh.run("ip addr flush dev eth0; ip addr add 10.90.0.51/24 dev eth0")
        found["spoofed source reaches the router"] = _greets(sh, ROUTER, 8080)
        found["router learned the spoofed source"] = _router_knows(namespace, "10.90.0.51")
        _delete([desktop], employee)
    assert found == {
        "address the portal pinned": "10.90.0.100",
        "router learned the claimed address": "",
        "own address reaches the router": True,
        "spoofed source reaches the router": False,
        "router learned the spoofed source": "",
    }
