"""A simulated fleet: hosts on libvirt's own test driver, one node description file each,
with the desktops' rows in the database and their domains and volumes on the hosts.

The hosts are simulated (the test driver answers in-process, with no QEMU behind it); the
portal reaches them through the real `LibvirtHypervisor`, which the registry picks for
`test:///<file>` URIs. Each such connection keeps its own in-memory state per process, so
a folder is used once (its URIs are never reused). Used by the scale regression tests
(tests/test_scale.py) and the scale bench (bench/scale.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from vms.hypervisor import domain_name, volume_name
from vms.models import Desktop, DesktopStatus, Host, Template
from vms.roles import EMPLOYEE_GROUP
from vms.settings_access import name_prefix

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
SHUTOFF = "5"  # VIR_DOMAIN_SHUTOFF, as the test driver's <test:runstate>
STOPPED_EVERY = 5  # one desktop in five on each host is stopped, the others run
DESKTOPS_PER_OWNER = 5
# Each simulated host: 64 CPUs and 1 TiB of memory; the rows' capacity leaves room for
# every desktop a fleet puts on it (up to 1,000 per host) and for the launches measured.
NODE_CPUS = 64
NODE_MEMORY_KIB = 2**30
ROW_CAPACITY = {"capacity_vcpus": 2048, "capacity_memory_mib": 2**21, "capacity_disk_gib": 50_000}


@dataclass
class SimFleet:
    hosts: list[Host]
    template: Template
    desktops: list[Desktop]


def node_xml(path: Path, *, domains: list[tuple[str, bool]], volumes: list[str]) -> None:
    """One host's node description for libvirt's test driver: its CPUs and memory, the
    storage pool of the settings holding `volumes`, and `domains` as (name, running)."""
    ET.register_namespace("test", TEST_NS)
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", 2000), ("nodes", 1), ("sockets", 1), ("cores", NODE_CPUS // 2),
                       ("threads", 2), ("active", NODE_CPUS)):  # fmt: skip
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(NODE_MEMORY_KIB)
    for name, running in domains:
        dom = ET.SubElement(node, "domain", type="test")
        ET.SubElement(dom, "name").text = name
        ET.SubElement(dom, "memory").text = "262144"
        ET.SubElement(ET.SubElement(dom, "os"), "type").text = "hvm"
        if not running:
            ET.SubElement(dom, f"{{{TEST_NS}}}runstate").text = SHUTOFF
    pool = ET.SubElement(node, "pool", type="dir")
    ET.SubElement(pool, "name").text = settings.STORAGE_POOL_NAME
    ET.SubElement(pool, "capacity", unit="GiB").text = "50000"
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = str(settings.STORAGE_POOL_PATH)
    for name in volumes:
        vol = ET.SubElement(pool, "volume", type="file")
        ET.SubElement(vol, "name").text = name
        ET.SubElement(vol, "capacity", unit="GiB").text = "1"
        target = ET.SubElement(vol, "target")
        ET.SubElement(target, "path").text = f"{settings.STORAGE_POOL_PATH}/{name}"
    path.write_text(ET.tostring(node, encoding="unicode"))


def fleet_build(
    *, hosts: int, desktops: int, folder: Path, tag: str = "", shared_pool: bool = False
) -> SimFleet:
    """`hosts` test-driver hosts (node files in `folder`, which must not exist yet) and
    `desktops` desktops spread round robin over them, one in five stopped, five per owner;
    the rows in the database (bulk_create), the domains and volumes in the node files, so
    that rows and hosts agree. `tag` keeps names apart when one database holds two fleets.
    `shared_pool`: every host's pool holds every desktop's volume, as when the pool
    directory is shared between the hosts (NFS; the lab hosts)."""
    folder.mkdir(parents=True)
    template = Template.objects.create(
        name=f"Scale{tag}", base_image_path=f"{settings.STORAGE_POOL_PATH}/base.qcow2",
        vcpus=1, memory_mib=256, disk_gib=1,
    )  # fmt: skip
    template.assigned_groups.add(Group.objects.get_or_create(name=EMPLOYEE_GROUP)[0])
    rows = Host.objects.bulk_create(
        Host(name=f"hv{tag}{i:03d}", uri=f"test://{folder.resolve()}/hv{i:03d}.xml",
             storage_pool=settings.STORAGE_POOL_NAME, last_check_ok=True,
             console_address=_console_address(i), **ROW_CAPACITY)
        for i in range(hosts)
    )  # fmt: skip
    user_model = get_user_model()
    owners = user_model.objects.bulk_create(
        user_model(username=f"scale{tag}-{i:05d}", password="!")  # unusable password
        for i in range(math.ceil(desktops / DESKTOPS_PER_OWNER))
    )
    # Desktop i goes to host i % hosts, as its (i // hosts)-th: one in five of each host's
    # desktops is stopped, whatever the number of hosts.
    made = [_desktop(i, owners[i // DESKTOPS_PER_OWNER], template, rows[i % hosts],
                     stopped=(i // hosts) % STOPPED_EVERY == 0)
            for i in range(desktops)]  # fmt: skip
    Desktop.objects.bulk_create(made, batch_size=2000)
    for index in range(hosts):
        mine = made[index::hosts]
        node_xml(
            folder / f"hv{index:03d}.xml",
            domains=[(d.domain_name, d.status == DesktopStatus.RUNNING) for d in mine],
            volumes=[d.volume_name for d in (made if shared_pool else mine)],
        )
    hosts_saved = list(Host.objects.filter(pk__in=[h.pk for h in rows]).order_by("pk"))
    return SimFleet(hosts=hosts_saved, template=template, desktops=made)


def _console_address(i: int) -> str:
    """A documentation address (RFC 5737, never routed): recovery and migration take only
    hosts with a network address as targets. Nothing ever connects to it: no console is
    opened and no migration runs on a simulated host."""
    return f"192.0.2.{i % 250 + 1}"


def _desktop(i: int, owner: object, template: Template, host: Host, *, stopped: bool) -> Desktop:
    desktop = Desktop(
        owner=owner, template=template, host=host, name=f"Desktop {i}",
        vcpus=1, memory_mib=256, disk_gib=1,
        status=DesktopStatus.STOPPED if stopped else DesktopStatus.RUNNING,
    )  # fmt: skip
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    return desktop
