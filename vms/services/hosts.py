"""Hypervisor hosts: reaching their hypervisor, the health heartbeat, the local host."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone

from vms.hypervisor import Hypervisor, HypervisorError, backend_for, get_hypervisor
from vms.models import Host
from vms.services.errors import ServiceError

log = logging.getLogger(__name__)
LOCAL_HOST_NAME = "local"


def hypervisor_for(host: Host) -> Hypervisor:
    """The (per-process, cached) hypervisor adapter of a host."""
    return get_hypervisor(host.uri)


def host_check_uri(uri: str) -> str:
    """`uri` stripped, when a registered backend serves its scheme (checked before a host
    is saved, so an unusable URI is refused on the form, not at the first launch)."""
    uri = uri.strip()
    try:
        backend_for(uri)  # selects the backend only; nothing is connected to
    except HypervisorError as exc:
        raise ServiceError(exc.message) from exc
    return uri


def host_virt_type(host: Host) -> str:
    """'kvm' or 'qemu' (TCG) for new domains on `host`: the setting, else what was detected."""
    if settings.VIRT_TYPE != "auto":
        return str(settings.VIRT_TYPE)
    if not host.virt_type:
        host.virt_type = "kvm" if hypervisor_for(host).kvm_available() else "qemu"
        Host.objects.filter(pk=host.pk).update(virt_type=host.virt_type)
    return host.virt_type


def host_heartbeat(*, host: Host) -> bool:
    """Check the host's libvirt and storage pool; record the result for pages and /healthz."""
    try:
        hypervisor = hypervisor_for(host)
        hypervisor.ensure_pool(name=host.storage_pool, path=str(settings.STORAGE_POOL_PATH))
        virt_type = "kvm" if hypervisor.kvm_available() else "qemu"
    except HypervisorError as exc:
        log.warning("host %s is unhealthy: %s", host.name, exc.message)
        _record(host, ok=False, error=exc.message)
        return False
    _record(host, ok=True, error="", virt_type=virt_type)
    return True


def _record(host: Host, *, ok: bool, error: str, **extra: str) -> None:
    Host.objects.filter(pk=host.pk).update(
        last_checked_at=timezone.now(), last_check_ok=ok, last_check_error=error, **extra
    )


def host_ensure_local() -> Host:
    """Register the machine's own libvirt as host 'local' (first run of the portal)."""
    host, created = Host.objects.get_or_create(
        name=LOCAL_HOST_NAME,
        defaults={"uri": settings.LIBVIRT_URI, "storage_pool": settings.STORAGE_POOL_NAME},
    )
    if created:
        log.info("registered host %s at %s", host.name, host.uri)
    return host
