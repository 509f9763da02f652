"""Monitoring data: what each desktop and host really uses, sampled by each host's worker
(vms.services.metrics.sampling), as a latest value per desktop and host and as history.

History rows come at three resolutions in one table per kind: `raw` (one per sample, kept
METRICS_RAW_RETENTION_H), `minute` and `hour` (means and maxima of the finer rows, kept
METRICS_MINUTE_RETENTION_DAYS and METRICS_HOUR_RETENTION_DAYS). The rollup task writes
the coarser rows and prunes old ones. Pages, the API and /metrics read these rows only,
never libvirt.
"""

from __future__ import annotations

from django.db import models

from vms.models.desktops import Desktop
from vms.models.fleet import Host


class Resolution(models.IntegerChoices):
    """How much time one history row covers."""

    RAW = 0, "raw sample"
    MINUTE = 60, "1 minute"
    HOUR = 3600, "1 hour"


class DesktopLoad(models.Model):
    """A desktop's latest measured load, and the counters of its last sample (the baseline
    the next sample's rates are computed from). One row per desktop that has ever been
    sampled; `host` is where that sample was taken (a desktop that moved starts afresh).
    `cpu_high_since` is when its CPU use last rose to the alert threshold (None: below)."""

    desktop = models.OneToOneField(
        Desktop, primary_key=True, on_delete=models.CASCADE, related_name="load"
    )
    host = models.ForeignKey(Host, null=True, on_delete=models.SET_NULL, related_name="+")
    sampled_at = models.DateTimeField()
    counters = models.JSONField(default=dict)
    cpu_percent = models.FloatField(null=True)
    memory_mib = models.FloatField(null=True)
    cpu_high_since = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"load of {self.desktop_id}"


class HostUsage(models.Model):
    """A host's latest measured use (the metrics sample, beside the heartbeat's own), with
    its CPU counters as the next sample's baseline and its storage pool's fill."""

    host = models.OneToOneField(
        Host, primary_key=True, on_delete=models.CASCADE, related_name="usage"
    )
    sampled_at = models.DateTimeField()
    counters = models.JSONField(default=dict)
    cpu_percent = models.FloatField(null=True)
    memory_used_mib = models.FloatField(null=True)
    memory_total_mib = models.FloatField(null=True)
    running_desktops = models.PositiveIntegerField(default=0)
    pool_capacity_bytes = models.BigIntegerField(null=True)
    pool_allocation_bytes = models.BigIntegerField(null=True)

    def __str__(self) -> str:
        return f"usage of {self.host_id}"


class DesktopSample(models.Model):
    """One point of a desktop's history: CPU in percent of its vCPUs, memory in MiB, disk
    and network in bytes and operations (packets) per second. At `raw` resolution `*_max`
    equal the values; in rollups they are the maxima of the finer rows, and `running_s`
    is how long the desktop was seen running in the bucket (usage reports sum it)."""

    desktop = models.ForeignKey(Desktop, on_delete=models.CASCADE, related_name="samples")
    host = models.ForeignKey(Host, null=True, on_delete=models.SET_NULL, related_name="+")
    resolution = models.PositiveSmallIntegerField(choices=Resolution.choices)
    at = models.DateTimeField()
    running_s = models.FloatField(default=0)
    cpu_percent = models.FloatField(null=True)
    cpu_percent_max = models.FloatField(null=True)
    memory_mib = models.FloatField(null=True)
    memory_mib_max = models.FloatField(null=True)
    disk_read_bps = models.FloatField(null=True)
    disk_write_bps = models.FloatField(null=True)
    disk_read_iops = models.FloatField(null=True)
    disk_write_iops = models.FloatField(null=True)
    net_rx_bps = models.FloatField(null=True)
    net_tx_bps = models.FloatField(null=True)
    net_rx_pps = models.FloatField(null=True)
    net_tx_pps = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["desktop", "resolution", "at"], name="desktop_sample_once"
            )
        ]
        indexes = [models.Index(fields=["resolution", "at"], name="desktop_sample_age")]

    def __str__(self) -> str:
        return f"{self.desktop_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class HostSample(models.Model):
    """One point of a host's history: CPU in percent of all its CPUs, memory used and in
    total (MiB), running desktops, and the storage pool's fill; `*_max` as for desktops."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="samples")
    resolution = models.PositiveSmallIntegerField(choices=Resolution.choices)
    at = models.DateTimeField()
    cpu_percent = models.FloatField(null=True)
    cpu_percent_max = models.FloatField(null=True)
    memory_used_mib = models.FloatField(null=True)
    memory_used_mib_max = models.FloatField(null=True)
    memory_total_mib = models.FloatField(null=True)
    running_desktops = models.FloatField(default=0)
    running_desktops_max = models.FloatField(default=0)
    pool_used_percent = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["host", "resolution", "at"], name="host_sample_once")
        ]
        indexes = [models.Index(fields=["resolution", "at"], name="host_sample_age")]

    def __str__(self) -> str:
        return f"{self.host_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class AlertKind(models.TextChoices):
    """What a monitoring alert is about (thresholds: settings METRICS_ALERT_*)."""

    HOST_CPU = "host_cpu", "Host CPU above threshold"
    HOST_MEMORY = "host_memory", "Host memory above threshold"
    DESKTOP_CPU = "desktop_cpu", "Desktop pinned at full CPU"
    POOL_FULL = "pool_full", "Storage pool nearly full"


class MetricAlert(models.Model):
    """A condition the sampling found, open from `started_at` while it holds and closed
    (`ended_at`) when a later sample no longer finds it. Opening and closing are logged;
    the admin's host page shows the open ones."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="alerts")
    desktop = models.ForeignKey(
        Desktop, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    message = models.CharField(max_length=300)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "kind"],
                condition=models.Q(ended_at__isnull=True, desktop__isnull=True),
                name="metric_alert_host_open_once",
            ),
            models.UniqueConstraint(
                fields=["kind", "desktop"],
                condition=models.Q(ended_at__isnull=True, desktop__isnull=False),
                name="metric_alert_desktop_open_once",
            ),
        ]

    def __str__(self) -> str:
        return self.message
