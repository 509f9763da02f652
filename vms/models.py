"""The portal's data: hosts, templates, quotas, desktops and the audit trail.

Models hold data and simple derived values only. They never call libvirt; state changes
go through `vms.services`.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_DISK_GIB = 64 * 1024


class Host(models.Model):
    """A hypervisor host reached through a libvirt URI; desktops are placed on one."""

    name = models.SlugField(max_length=50, unique=True)
    libvirt_uri = models.CharField(max_length=255)
    storage_pool = models.CharField(max_length=100, default="desktops")
    enabled = models.BooleanField(default=True)
    capacity_vcpus = models.PositiveIntegerField(default=16)
    capacity_memory_mib = models.PositiveIntegerField(default=16384)
    capacity_disk_gib = models.PositiveIntegerField(default=500)
    # Written by the heartbeat task; pages and /healthz read these, never libvirt.
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(default=False)
    last_check_error = models.TextField(blank=True, default="")
    virt_type = models.CharField(max_length=10, blank=True, default="")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        """The Celery queue whose worker runs this host's libvirt work."""
        return f"host.{self.name}"


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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


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
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


class Desktop(models.Model):
    """One user's virtual desktop: a libvirt domain over a linked-clone volume.

    Sizes are copied from the template at creation so that quota sums stay true when a
    template is edited later. `status` is written only by `vms.services.transitions`.
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "status"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner})"


class AuditEvent(models.Model):
    """An append-only record of one state change or sensitive action."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    action = models.CharField(max_length=64, db_index=True)
    desktop = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"


class ConsoleMode(models.TextChoices):
    FULL = "full", "Full control"
    VIEW = "view", "View only"


class ConsoleSession(models.Model):
    """One open (or finished) console connection: who, which desktop, how, and how much.

    Written by the relay when it connects and when it closes.
    """

    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="console_sessions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="console_sessions"
    )
    mode = models.CharField(max_length=10, choices=ConsoleMode.choices)
    reason = models.TextField(blank=True, default="")
    relay = models.CharField(max_length=20, default="channels")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    bytes_to_guest = models.BigIntegerField(default=0)
    bytes_from_guest = models.BigIntegerField(default=0)
    dropped_messages = models.PositiveIntegerField(default=0)
    close_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["desktop", "ended_at"]),
            models.Index(fields=["user", "ended_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.desktop} ({self.mode})"
