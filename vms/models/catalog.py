"""The catalog: templates (a golden image plus the size of its desktops), their networks
and their versions (bases flattened from a prepared desktop)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from vms.models.networks import Network

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_DISK_GIB = 64 * 1024


class ConsoleType(models.TextChoices):
    VNC = "vnc", "VNC"
    SPICE = "spice", "SPICE"


class Template(models.Model):
    """A golden disk image plus the size of the desktops made from it."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    base_image_path = models.CharField(
        max_length=1024, help_text="Path of the qcow2 base volume on the hypervisor hosts."
    )
    os_label = models.CharField(max_length=100, blank=True, default="")
    vcpus = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(MAX_VCPUS)]
    )
    memory_mib = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(96), MaxValueValidator(MAX_MEMORY_MIB)]
    )
    disk_gib = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(MAX_DISK_GIB)]
    )
    console_type = models.CharField(
        max_length=10, choices=ConsoleType.choices, default=ConsoleType.VNC
    )
    persistent = models.BooleanField(
        default=True, help_text="Keep the desktop's disk across stops (else reset on stop)."
    )
    enabled = models.BooleanField(default=True)
    assigned_users = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="assigned_templates"
    )
    assigned_groups = models.ManyToManyField(Group, blank=True, related_name="assigned_templates")
    networks: models.ManyToManyField[Network, TemplateNetwork] = models.ManyToManyField(
        Network, through="TemplateNetwork", blank=True, related_name="templates"
    )
    bandwidth_kb_s = models.PositiveIntegerField(
        "bandwidth limit (kB/s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(8)],
        help_text="Each desktop interface's limit, each way, in kB/s (1 kB = 1000 bytes).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Snapshots and backups (docs/backups.md).
    snapshot_limit = models.PositiveSmallIntegerField(
        default=5, validators=[MaxValueValidator(50)], help_text="Snapshots a desktop may keep."
    )
    backup_keep = models.PositiveSmallIntegerField(
        default=7,
        validators=[MinValueValidator(1), MaxValueValidator(365)],
        help_text="Backups kept per desktop; older ones are merged away.",
    )
    backup_every_hours = models.PositiveSmallIntegerField(
        default=0, help_text="Back up each desktop this often (0: only on demand)."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TemplateNetwork(models.Model):
    """A template's network, in order: its desktops' first NIC is on position 0."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE)
    network = models.ForeignKey(Network, on_delete=models.PROTECT)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["template", "network"], name="template_network_once")
        ]

    def __str__(self) -> str:
        return f"{self.template_id}: {self.network_id} #{self.position}"


class TemplateVersionStatus(models.TextChoices):
    """A template version's state; the moves are
    vms.services.catalog.versions.VERSION_TRANSITIONS."""

    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETED = "deleted"


class TemplateVersion(models.Model):
    """A version of a template's base image; the newest ready one is the template's
    `base_image_path`. Version 1 is the imported image; later ones are flattened from a
    prepared desktop (`made_from`). A base still under any desktop is never deleted."""

    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    base_image_path = models.CharField(max_length=1024, blank=True, default="")
    status = models.CharField(
        max_length=12, choices=TemplateVersionStatus.choices, default=TemplateVersionStatus.BUILDING
    )
    made_from = models.ForeignKey(
        "Desktop", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Whose desktop it was (an employee's disk becomes everyone's base): the owner, and
    # their username and the desktop's name as text, which outlive the rows.
    made_from_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    made_from_owner_name = models.CharField(max_length=150, blank=True, default="")
    made_from_name = models.CharField(max_length=100, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True, default="")
    progress = models.PositiveSmallIntegerField(default=0)  # percent, while building
    created_at = models.DateTimeField(auto_now_add=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="template_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.template} v{self.number}"
