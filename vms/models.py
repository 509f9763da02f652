"""The portal's data: hosts, networks, templates, quotas, desktops and the audit trail.

Models hold data and simple derived values only. They never call libvirt; state changes
go through `vms.services`. The audit trail (AuditEvent, ConsoleSession) is append-only
here, in the ORM, and (PostgreSQL) in the database: see migration 0002.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connections, models, transaction
from django.db.models import Q

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_DISK_GIB = 64 * 1024


class HostStatus(models.TextChoices):
    """Whether a host's heartbeat still arrives; the moves are `HOST_TRANSITIONS`
    (vms.services.fleet). `down` is decided by the portal when no heartbeat has arrived for
    HOST_DOWN_AFTER_S; it starts the recovery of the host's desktops."""

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
    joins `bridge`, an existing bridge on the hosts; its addresses come from the LAN.
    `isolate_desktops` keeps the desktops of the network from reaching each other (port
    isolation); `gateway_ports` are the TCP ports on the gateway address desktops may reach
    besides DHCP and DNS (every other port of the host is dropped: docs/networks.md).
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
    networks = models.ManyToManyField(
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
    """A desktop's state; the allowed moves are vms.services.transitions.TRANSITIONS. The
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


class AppendOnlyError(Exception):
    """Raised when code tries to delete or rewrite the audit trail (audit events, console
    sessions). Rows are only ever added; retention removes old ones (`expire`)."""


# The PostgreSQL triggers (migration 0002) let a DELETE through only for rows older than
# this per-transaction setting, which only `AppendOnlyQuerySet.expire` sets.
EXPIRE_BEFORE_SETTING = "vms.audit_expire_before"


class AppendOnlyQuerySet(models.QuerySet):
    """Refuses delete() and update(); `expire` is the one deliberate way to remove rows."""

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(
            f"{self.model.__name__} rows are append-only and cannot be deleted; "
            "AUDIT_RETENTION_DAYS decides when old rows go"
        )

    delete.queryset_only = True  # type: ignore[attr-defined]  # like Django's: no Manager.delete()

    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only and cannot be changed")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("update_conflicts"):
            raise AppendOnlyError(f"{self.model.__name__} rows are never upserted")
        return super().bulk_create(objs, *args, **kwargs)

    def expire(self, *, before: datetime) -> int:
        """Delete the rows whose retention time (`model.RETENTION_FIELD`) is before `before`;
        return how many. Only the retention service calls this."""
        field: str = self.model.RETENTION_FIELD
        old = self.filter(**{f"{field}__lt": before})
        with transaction.atomic(using=self.db):  # a failure rolls the setting back too
            _expiry_allow(using=self.db, before=before.isoformat())
            removed = models.QuerySet.delete(old)[0]
            _expiry_allow(using=self.db, before="")  # shut the door for the rest
        return removed


def _expiry_allow(*, using: str, before: str) -> None:
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [EXPIRE_BEFORE_SETTING, before])


class AppendOnlyModel(models.Model):
    """A row that is written once: saving an existing row or deleting one is refused."""

    RETENTION_FIELD: ClassVar[str]

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only")
        kwargs["force_insert"] = True  # never an UPDATE of a row with the same id
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only and cannot be deleted")


class AuditEvent(AppendOnlyModel):
    """An append-only record of one state change or sensitive action.

    The users and desktops it names cannot be deleted while it exists (PROTECT): deleting
    them would blank or remove history. Users are deactivated; desktops are soft-deleted.
    """

    RETENTION_FIELD = "created_at"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_events",
    )
    action = models.CharField(max_length=64, db_index=True)
    desktop = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events"
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        base_manager_name = "objects"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action}"


class ConsoleMode(models.TextChoices):
    FULL = "full", "Full control"
    VIEW = "view", "View only"


# What closing a console session writes (vms.services.consoles); nothing else ever changes.
CONSOLE_CLOSE_FIELDS = frozenset(
    {"ended_at", "close_reason", "bytes_to_guest", "bytes_from_guest", "dropped_messages"}
)


class ConsoleSessionQuerySet(AppendOnlyQuerySet):
    """The one update a session gets: its close, once, while it is open."""

    def update(self, **kwargs: Any) -> int:
        if kwargs.get("ended_at") is None or not set(kwargs) <= CONSOLE_CLOSE_FIELDS:
            raise AppendOnlyError(
                "A console session is only ever closed: an update sets ended_at and nothing "
                f"but {sorted(CONSOLE_CLOSE_FIELDS)}"
            )
        if self.filter(ended_at__isnull=False).exists():
            raise AppendOnlyError("A closed console session cannot be changed")
        # Only open rows, even if one closed since the check above.
        return models.QuerySet.update(self.filter(ended_at__isnull=True), **kwargs)


class ConsoleSession(AppendOnlyModel):
    """One open (or finished) console connection: who, which desktop, how, and how much.

    Written by the relay when it connects and when it closes (the close fields, once); part
    of the audit trail, so append-only like AuditEvent.
    """

    RETENTION_FIELD = "ended_at"  # sessions still open are never removed

    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="console_sessions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="console_sessions"
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

    objects = ConsoleSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        base_manager_name = "objects"
        indexes = [
            models.Index(fields=["desktop", "ended_at"]),
            models.Index(fields=["user", "ended_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user} on {self.desktop} ({self.mode})"


class SnapshotStatus(models.TextChoices):
    """A snapshot's state; the moves are vms.services.snapshots.SNAPSHOT_TRANSITIONS."""

    CREATING = "creating"
    READY = "ready"
    REVERTING = "reverting"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"


class Snapshot(models.Model):
    """An internal snapshot of a desktop's qcow2 disk (libvirt's snapshot API).

    `with_memory` when taken of a running guest (a revert resumes it); else taken of a
    stopped desktop (a revert leaves it stopped). `size_bytes` is measured from the image:
    how much the desktop's volume grew when the snapshot was taken (its saved memory and
    metadata), plus what later writes have copied since; it counts toward the disk quota.
    The `reason` and `requested_by` of the last revert are kept for the help-desk rule.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="snapshots")
    name = models.CharField(max_length=100)
    libvirt_name = models.CharField(max_length=60)
    status = models.CharField(
        max_length=12, choices=SnapshotStatus.choices, default=SnapshotStatus.CREATING
    )
    with_memory = models.BooleanField(default=False)
    size_bytes = models.BigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.name} of {self.desktop_id}"


class BackupStatus(models.TextChoices):
    """A backup's state; the moves are vms.services.backups.BACKUP_TRANSITIONS. Only
    `ready` backups are listed to people and restorable."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Backup(models.Model):
    """One backup of a desktop's disk: a qcow2 file in BACKUP_DIR, full or incremental.

    An incremental backup's file holds only the clusters changed since `parent` and names
    the parent's file as its backing file, so the newest file of a chain reads as the whole
    disk. It is written under a temporary name and renamed when it is complete and verified;
    `file_name` is set only then. `checkpoint` is the libvirt checkpoint it made, which the
    next incremental backup starts from. Restores from it are `Restore` rows.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="backups")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    status = models.CharField(
        max_length=12, choices=BackupStatus.choices, default=BackupStatus.QUEUED
    )
    checkpoint = models.CharField(max_length=60, blank=True, default="")
    file_name = models.CharField(max_length=200, blank=True, default="")
    bytes_written = models.BigIntegerField(default=0)
    virtual_bytes = models.BigIntegerField(default=0)
    progress = models.PositiveSmallIntegerField(default=0)
    scheduled = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["desktop", "status"])]

    def __str__(self) -> str:
        return f"backup {self.pk} of {self.desktop_id}"

    @property
    def incremental(self) -> bool:
        return self.parent_id is not None


class RestoreTarget(models.TextChoices):
    NEW = "new", "a new desktop"
    IN_PLACE = "in_place", "in place"


class RestoreStatus(models.TextChoices):
    """A restore's state; the moves are vms.services.backups.RESTORE_TRANSITIONS."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Restore(models.Model):
    """One restore of `backup` into `desktop`: a new desktop provisioned from the backup, or
    the backup's own desktop whose disk is replaced (in place).

    The backup's chain is copied into volume `volume_name` by a block job on the desktop's
    host (`job_name`, a paused helper domain: measured into `progress`, cancellable). An
    in-place restore copies next to the old disk and swaps only when the copy is whole and
    checked, so a failed or cancelled one leaves the desktop as it was.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    backup = models.ForeignKey(Backup, on_delete=models.PROTECT, related_name="restores")
    desktop = models.ForeignKey(Desktop, on_delete=models.PROTECT, related_name="restores")
    target = models.CharField(max_length=10, choices=RestoreTarget.choices)
    status = models.CharField(
        max_length=12, choices=RestoreStatus.choices, default=RestoreStatus.QUEUED
    )
    progress = models.PositiveSmallIntegerField(default=0)
    volume_name = models.CharField(max_length=120)
    job_name = models.CharField(max_length=120)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["desktop", "status"])]

    def __str__(self) -> str:
        return f"restore {self.pk} of {self.backup_id} into {self.desktop_id}"


class TemplateVersion(models.Model):
    """A version of a template's base image; the newest ready one is the template's
    `base_image_path`. Version 1 is the imported image; later ones are flattened from a
    prepared desktop (`made_from`). A base still under any desktop is never deleted."""

    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    base_image_path = models.CharField(max_length=1024, blank=True, default="")
    # building, ready, failed, cancelled, deleted (vms.services.template_versions)
    status = models.CharField(max_length=12, default="building")
    made_from = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
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


# Monitoring models live in their own module (vms.models_metrics); imported here so Django
# registers them with the app.
from vms.models_metrics import (  # noqa: E402, F401
    AlertKind,
    DesktopLoad,
    DesktopSample,
    HostSample,
    HostUsage,
    MetricAlert,
    Resolution,
)
