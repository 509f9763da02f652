"""GET /metrics: the Prometheus text format. The portal's own request metrics
(django-prometheus, this process's) plus a collector that reads the monitoring rows the
hosts' workers stored (vms.models.metrics), never libvirt.

Series are labelled by desktop id and host name only: no user names, desktop names or
anything else a person typed. Callers show `Authorization: Bearer <METRICS_TOKEN>`
(compared in constant time); with no token set, only loopback clients are answered, and a
request that came through a proxy is loopback only if a trusted proxy says so.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vms.models import DesktopStatus
from vms.models.metrics import DesktopLoad, HostUsage, MetricAlert
from vms.services.metrics.sampling import desktop_loads_fresh
from vms.web.client import client_is_loopback

# DesktopLoad counters exported as Prometheus counters: (counter, metric name, help, scale).
DESKTOP_COUNTERS = (
    ("cpu_time_ns", "cpu_seconds", "CPU time the desktop's guest used", 1e-9),
    ("block_rd_bytes", "disk_read_bytes", "Bytes the desktop read from its disks", 1),
    ("block_wr_bytes", "disk_written_bytes", "Bytes the desktop wrote to its disks", 1),
    ("block_rd_reqs", "disk_reads", "Read operations on the desktop's disks", 1),
    ("block_wr_reqs", "disk_writes", "Write operations on the desktop's disks", 1),
    ("net_rx_bytes", "network_received_bytes", "Bytes the desktop's cards received", 1),
    ("net_tx_bytes", "network_sent_bytes", "Bytes the desktop's cards sent", 1),
    ("net_rx_packets", "network_received_packets", "Packets the desktop's cards received", 1),
    ("net_tx_packets", "network_sent_packets", "Packets the desktop's cards sent", 1),
)
LABELS = ["desktop", "host"]


class PortalCollector(Collector):
    """Per-desktop and per-host series from the latest stored samples (one query each)."""

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: never read the database then

    def collect(self) -> Iterator[Metric]:
        yield from self._desktops()
        yield from self._hosts()

    def _desktops(self) -> Iterator[Metric]:
        loads = DesktopLoad.objects.filter(
            desktop_loads_fresh(), host__isnull=False, desktop__status=DesktopStatus.RUNNING
        ).values_list("desktop_id", "host__name", "cpu_percent", "memory_mib", "counters")
        cpu = GaugeMetricFamily(
            "portal_desktop_cpu_percent", "Desktop CPU use in percent of its vCPUs", labels=LABELS
        )
        memory = GaugeMetricFamily(
            "portal_desktop_memory_bytes", "Memory the desktop uses (balloon or RSS)", labels=LABELS
        )
        counters = {
            name: CounterMetricFamily(f"portal_desktop_{name}", text, labels=LABELS)
            for _key, name, text, _scale in DESKTOP_COUNTERS
        }
        for desktop_id, host, cpu_percent, memory_mib, raw in loads:
            labels = [str(desktop_id), host]
            if cpu_percent is not None:
                cpu.add_metric(labels, cpu_percent)
            if memory_mib is not None:
                memory.add_metric(labels, memory_mib * 2**20)
            for key, name, _text, scale in DESKTOP_COUNTERS:
                if raw.get(key) is not None:
                    counters[name].add_metric(labels, raw[key] * scale)
        yield cpu
        yield memory
        yield from counters.values()

    def _hosts(self) -> Iterator[Metric]:
        rows = HostUsage.objects.select_related("host")
        gauges = {
            name: GaugeMetricFamily(f"portal_host_{name}", text, labels=["host"])
            for name, text in (
                ("cpu_percent", "Host CPU use in percent of all its CPUs"),
                ("memory_used_bytes", "Host memory in use"),
                ("memory_total_bytes", "Host memory in total"),
                ("running_desktops", "Desktops running on the host"),
                ("capacity_vcpus", "vCPUs the admin allows desktops on the host"),
                ("pool_capacity_bytes", "Size of the host's storage pool"),
                ("pool_allocation_bytes", "Allocated bytes of the host's storage pool"),
                ("alerts", "Monitoring alerts open on the host"),
            )
        }
        open_alerts: dict[int, int] = {}
        for host_id in MetricAlert.objects.filter(ended_at=None).values_list("host_id", flat=True):
            open_alerts[host_id] = open_alerts.get(host_id, 0) + 1
        for usage in rows:
            label = [usage.host.name]
            values = {
                "cpu_percent": usage.cpu_percent,
                "memory_used_bytes": _mib(usage.memory_used_mib),
                "memory_total_bytes": _mib(usage.memory_total_mib),
                "running_desktops": usage.running_desktops,
                "capacity_vcpus": usage.host.capacity_vcpus,
                "pool_capacity_bytes": usage.pool_capacity_bytes,
                "pool_allocation_bytes": usage.pool_allocation_bytes,
                "alerts": open_alerts.get(usage.host_id, 0),
            }
            for name, value in values.items():
                if value is not None:
                    gauges[name].add_metric(label, float(value))
        yield from gauges.values()


def _mib(value: float | None) -> float | None:
    return None if value is None else value * 2**20


# The collector has a registry of its own: it reads the database only when scraped (a
# registry asks a collector without `describe` at registration), and the default registry
# (django-prometheus's request metrics, the process's) stays as that library made it.
PORTAL_REGISTRY = CollectorRegistry(auto_describe=False)
PORTAL_REGISTRY.register(PortalCollector())


def metrics_allowed(request: HttpRequest) -> bool:
    """The bearer token when one is set (constant-time compare); else loopback clients."""
    token: str = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    return client_is_loopback(request)


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text format, or 403 (a plain sentence) for a caller not allowed."""
    if not metrics_allowed(request):
        said = (
            "Send Authorization: Bearer <METRICS_TOKEN>."
            if settings.METRICS_TOKEN
            else "Only loopback clients may read /metrics when METRICS_TOKEN is unset."
        )
        return HttpResponse(said, status=403, content_type="text/plain; charset=utf-8")
    body = generate_latest(REGISTRY) + generate_latest(PORTAL_REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
