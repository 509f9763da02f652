"""Typed accessors for the portal's own settings (one place that reads them)."""

from __future__ import annotations

from django.conf import settings


def name_prefix() -> str:
    """Prefix of every libvirt object the portal owns."""
    return str(settings.NAME_PREFIX)


def shutdown_timeout_s() -> float:
    """How long a graceful guest shutdown may take before the power is cut."""
    return float(settings.GUEST_SHUTDOWN_TIMEOUT_S)


def image_max_virtual_size_gib() -> int:
    """The largest virtual size (GiB) a template image may have."""
    return int(settings.IMAGE_MAX_VIRTUAL_SIZE_GIB)


def metrics_setting(name: str) -> float:
    """One of the METRICS settings (sampling interval, retention, alert thresholds)."""
    return float(settings.METRICS[name])
