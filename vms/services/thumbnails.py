"""Thumbnails: the worker stores a small screenshot of every running desktop, so that
pages can show the screens without ever calling libvirt while they render."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from PIL import Image

from vms.hypervisor import HypervisorError
from vms.models import Desktop, DesktopStatus, Host
from vms.services.hosts import hypervisor_for

log = logging.getLogger(__name__)
THUMBNAIL_WIDTH = 320


def thumbnail_path(desktop_id: object) -> Path:
    """Where the thumbnail of a desktop is kept (outside the public static files)."""
    return Path(settings.MEDIA_ROOT) / "thumbnails" / f"{desktop_id}.png"


def thumbnails_refresh(*, host: Host) -> int:
    """Store a fresh thumbnail for each running desktop on `host`; return how many."""
    hypervisor = hypervisor_for(host)
    stored = 0
    for desktop in Desktop.objects.filter(host=host, status=DesktopStatus.RUNNING):
        try:
            png = hypervisor.screenshot(name=desktop.domain_name)
        except HypervisorError as exc:
            log.info("no screenshot of %s: %s", desktop.domain_name, exc.message)
            continue
        _store(desktop.pk, png)
        Desktop.objects.filter(pk=desktop.pk).update(thumbnail_at=timezone.now())
        stored += 1
    return stored


def _store(desktop_id: object, png: bytes) -> None:
    image = Image.open(io.BytesIO(png))
    image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
    target = thumbnail_path(desktop_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    image.save(partial, format="PNG", optimize=True)
    os.replace(partial, target)  # readers never see half a file
