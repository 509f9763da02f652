"""The fleet: hypervisor hosts and whether their heartbeat still arrives."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class HostStatus(models.TextChoices):
    """Whether a host's heartbeat still arrives; the moves are `HOST_TRANSITIONS`
    (vms.services.fleet.heartbeat). `down` is decided by the portal when no heartbeat has
    arrived for HOST_DOWN_AFTER_S; it starts the recovery of the host's desktops."""

    UP = "up"
    DOWN = "down"


class Host(models.Model):
    """A hypervisor host reached through a URI; desktops are placed on one.

    The URI's scheme picks the backend that drives the host (``vms.hypervisor.registry``).
    Placement takes a host that is enabled, up and not in maintenance, whose admin caps
    (times the overcommit ratios) fit the desktop and whose last heartbeat's sample shows
    the memory free for it, and prefers the least loaded.
    """

    name = models.SlugField(max_length=50, unique=True)
    uri = models.CharField(
        "URI",
        max_length=255,
        help_text="How to reach the hypervisor, e.g. qemu:///system or "
        "qemu+ssh://root@hv1/system. The scheme picks the backend (docs/hypervisors.md).",
    )
    storage_pool = models.CharField(max_length=100, default="desktops")
    console_address = models.GenericIPAddressField(
        "console address",
        default="127.0.0.1",
        help_text="Where this host's guests' displays (VNC, SPICE) listen; the console relays "
        "connect there. 127.0.0.1 for the portal's own machine, the management-network "
        "address for a remote host. Never a public address.",
    )
    enabled = models.BooleanField(default=True)
    maintenance = models.BooleanField(
        default=False,
        help_text="A host in maintenance takes no new desktops; turning it on drains the host "
        "(running desktops move live to other hosts, stopped ones are re-homed).",
    )
    status = models.CharField(max_length=10, choices=HostStatus.choices, default=HostStatus.UP)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    capacity_vcpus = models.PositiveIntegerField(default=16)
    capacity_memory_mib = models.PositiveIntegerField(default=16384)
    capacity_disk_gib = models.PositiveIntegerField(default=500)
    cpu_overcommit = models.FloatField(
        "vCPU overcommit ratio",
        default=1.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(16.0)],
        help_text="Placement allows this many desktop vCPUs per vCPU of capacity.",
    )
    memory_overcommit = models.FloatField(
        "memory overcommit ratio",
        default=1.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(4.0)],
        help_text="Placement allows this much desktop memory per MiB of capacity.",
    )
    # The heartbeat's last sample of what the host really has and uses (None: not yet).
    load_cpus = models.PositiveIntegerField(null=True, blank=True)
    load_memory_mib = models.PositiveIntegerField(null=True, blank=True)
    load_available_memory_mib = models.PositiveIntegerField(null=True, blank=True)
    load_running_guests = models.PositiveIntegerField(null=True, blank=True)
    load_cpu_percent = models.FloatField(null=True, blank=True)
    load_cpu_counters = models.JSONField(default=dict, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Written by the heartbeat task; pages and /healthz read these, never libvirt.
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(default=False)
    last_check_error = models.TextField(blank=True, default="")
    virt_type = models.CharField(max_length=10, blank=True, default="")
    # The heartbeat's proof that the host's disk lock manager works (its running desktops
    # hold their leases in DISK_LOCKSPACE_DIR): without it the host takes no part in
    # recovery (vms.services.disks.leases); the note says why, on the admin's host page.
    disk_lock_ok = models.BooleanField("disk locks verified", default=False)
    disk_lock_note = models.TextField("disk locks", blank=True, default="")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        """The Celery queue whose worker runs this host's libvirt work."""
        return f"host.{self.name}"

    @property
    def long_queue_name(self) -> str:
        """The queue of this host's long work (whole-disk copies: backups, restores,
        template versions), served by a worker of its own so that they never hold up the
        host's heartbeat or its desktops' power actions."""
        return f"host.{self.name}.long"
