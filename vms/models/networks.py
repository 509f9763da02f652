"""Desktop networks, as the admin defines them (a desktop's NICs are vms.models.desktops)."""

from __future__ import annotations

from django.db import models


class NetworkMode(models.TextChoices):
    """How a network reaches beyond its hosts: routed out with NAT, not at all (desktops and
    the gateway only), or bridged onto an existing bridge or VLAN of the hosts."""

    NAT = "nat", "NAT"
    ISOLATED = "isolated", "Isolated"
    BRIDGE = "bridge", "Bridged"


class Network(models.Model):
    """A desktop network, created by the hypervisor layer on every host (libvirt network
    `<prefix>net-<name>`, with its guard nwfilter `<prefix>guard-<name>`).

    NAT and isolated networks have a `subnet` the portal manages: the gateway is its first
    address, each desktop interface gets a fixed address of the DHCP range (a DHCP host
    entry) and may send from that address only (nwfilter clean-traffic). A bridged network
    joins `bridge`, an existing bridge on the hosts; `subnet` is the LAN's, and each
    desktop is pinned to an address of its range the same way (the LAN's DHCP or the image
    gives it to the guest). `isolate_desktops` keeps the desktops of the network from
    reaching each other (port isolation, and the guard); `gateway_ports` are the TCP ports
    on the gateway address desktops may reach besides DHCP and DNS (every other port of the
    host, and the management plane, is dropped: docs/networks.md).
    """

    name = models.SlugField(max_length=30, unique=True)
    mode = models.CharField(max_length=10, choices=NetworkMode.choices, default=NetworkMode.NAT)
    subnet = models.CharField(
        max_length=43, blank=True, default="", help_text="IPv4 subnet, e.g. 10.80.0.0/24."
    )
    dhcp_start = models.GenericIPAddressField("DHCP range start", protocol="IPv4", null=True,
                                              blank=True)  # fmt: skip
    dhcp_end = models.GenericIPAddressField("DHCP range end", protocol="IPv4", null=True,
                                            blank=True)  # fmt: skip
    bridge = models.CharField(
        max_length=15, blank=True, default="", help_text="Bridged mode: the hosts' bridge."
    )
    isolate_desktops = models.BooleanField(
        default=True, help_text="Desktops of this network cannot reach each other."
    )
    gateway_ports = models.JSONField(
        default=list,
        blank=True,
        help_text="TCP ports on the gateway address desktops may reach (besides DHCP, DNS).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
