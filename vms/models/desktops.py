"""Desktops: the desktop row and its states, its NICs, and the quotas that bound them."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q

from vms.models.catalog import Template
from vms.models.fleet import Host
from vms.models.networks import Network


class Quota(models.Model):
    """Limits for one user or one group (exactly one of the two is set).

    A user's effective quota is their own quota if they have one; otherwise, per limit,
    the most generous value among their groups' quotas; otherwise settings.DEFAULT_QUOTA.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    group = models.OneToOneField(Group, null=True, blank=True, on_delete=models.CASCADE)
    max_desktops = models.PositiveIntegerField(default=2)
    max_vcpus = models.PositiveIntegerField(default=4)
    max_memory_mib = models.PositiveIntegerField(default=4096)
    max_disk_gib = models.PositiveIntegerField(default=40)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="quota_for_exactly_one_user_or_group",
            )
        ]

    def __str__(self) -> str:
        return f"quota for {self.user or self.group}"


class DesktopStatus(models.TextChoices):
    """A desktop's state; the allowed moves are vms.services.desktops.transitions.TRANSITIONS. The
    labels (Django's, from the member names: "Running") are what people read on the
    pages and in the live push's `status_label`."""

    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    MIGRATING = "migrating"
    RECOVERING = "recovering"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


class Desktop(models.Model):
    """One user's virtual desktop: a libvirt domain over a linked-clone volume.

    Sizes are copied from the template at creation so that quota sums stay true when a
    template is edited later. `status` is written only by `vms.services.desktops.transitions`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="desktops"
    )
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="desktops")
    host = models.ForeignKey(
        Host, null=True, blank=True, on_delete=models.PROTECT, related_name="desktops"
    )
    name = models.CharField(max_length=100)
    status = models.CharField(
        max_length=20, choices=DesktopStatus.choices, default=DesktopStatus.PROVISIONING
    )
    # While migrating: the host it is moving to (placement counts it there already).
    migrate_to = models.ForeignKey(
        Host,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="incoming_desktops",
    )
    last_error = models.TextField(blank=True, default="")
    # The step a launch has reached, for the progress bar (see services.progress).
    progress = models.CharField(max_length=20, blank=True, default="")
    domain_name = models.CharField(max_length=100, blank=True, default="")
    domain_uuid = models.CharField(max_length=36, blank=True, default="")
    volume_name = models.CharField(max_length=120, blank=True, default="")
    vcpus = models.PositiveSmallIntegerField()
    memory_mib = models.PositiveIntegerField()
    disk_gib = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    status_changed_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # When the worker last stored a screenshot (MEDIA_ROOT/thumbnails/<id>.png).
    thumbnail_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The base its overlay was made over ("": the template's current one); a reset moves
    # it to the template's newest version. A restored desktop's disk is a standalone copy
    # of the backup `restored_from` instead of an overlay.
    base_image_path = models.CharField(max_length=1024, blank=True, default="")
    restored_from = models.ForeignKey(
        "Backup", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner})"


class DesktopInterface(models.Model):
    """A desktop's NIC on one network: its MAC (allocated once, 52:54:00:xx:xx:xx), the
    address the portal assigned on a managed network, and the addresses libvirt's DHCP
    leases last showed (written by the heartbeat; pages read them from here)."""

    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="interfaces")
    network = models.ForeignKey(Network, on_delete=models.PROTECT, related_name="interfaces")
    position = models.PositiveSmallIntegerField(default=0)
    mac = models.CharField("MAC", max_length=17, unique=True)
    ip = models.GenericIPAddressField("assigned address", protocol="IPv4", null=True,
                                      blank=True)  # fmt: skip
    addresses = models.JSONField(default=list, blank=True)
    addresses_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["network", "ip"], name="interface_address_once")
        ]

    def __str__(self) -> str:
        return f"{self.mac} on {self.network_id}"
