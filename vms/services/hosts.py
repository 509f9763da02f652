"""Hypervisor hosts: reaching their hypervisor, the health heartbeat, the local host."""

from __future__ import annotations

import functools
import ipaddress
import logging
import queue
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

from django.conf import settings
from django.utils import timezone

from vms.hypervisor import HostCapacity, Hypervisor, HypervisorError, backend_for, get_hypervisor
from vms.models import Host
from vms.services.audit import audit_record
from vms.services.errors import ServiceError

log = logging.getLogger(__name__)
LOCAL_HOST_NAME = "local"
# How long an admin's form waits for a host to answer (a remote host behind a firewall
# that drops packets would otherwise hold the page for minutes).
CAPACITY_READ_TIMEOUT_S = 10.0
T = TypeVar("T")


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


def host_capacity_read(*, uri: str, pool: str) -> HostCapacity:
    """What the host at `uri` really has: CPUs, memory and the size of its storage pool
    `pool`, asked through its backend (so a new host is not registered with more than it
    has). A ServiceError says why when the host cannot be asked or does not answer within
    CAPACITY_READ_TIMEOUT_S."""
    uri = host_check_uri(uri)
    try:
        return _within(
            CAPACITY_READ_TIMEOUT_S, lambda: get_hypervisor(uri).host_capacity(pool=pool)
        )
    except HypervisorError as exc:
        raise ServiceError(f"Could not read the host's capacity: {exc.message}.") from exc
    except TimeoutError as exc:
        raise ServiceError(
            f"Could not read the host's capacity: {uri} did not answer within "
            f"{CAPACITY_READ_TIMEOUT_S:g} s. Check the URI and that libvirtd listens there."
        ) from exc


def _within(timeout_s: float, call: Callable[[], T]) -> T:
    """`call()`'s result, or TimeoutError after `timeout_s` (the call then finishes, or
    not, in a daemon thread that nobody waits for)."""
    # The thread hands back a function that returns the result or raises its exception.
    answers: queue.Queue[Callable[[], T]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            result = call()
        except Exception as exc:  # re-raised in the caller's thread
            answers.put(functools.partial(_reraise, exc))
        else:
            answers.put(lambda: result)

    threading.Thread(target=run, name="host-capacity-read", daemon=True).start()
    try:
        answer = answers.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout_s} s") from None
    return answer()


def _reraise(exc: Exception) -> NoReturn:
    raise exc


def host_ensure_local() -> Host:
    """Register the machine's own libvirt as host 'local' (first run of the portal), with
    the capacity it really has when it answers (else the model's defaults, logged)."""
    host = Host.objects.filter(name=LOCAL_HOST_NAME).first()
    if host is not None:
        return host
    defaults = {"uri": settings.LIBVIRT_URI, "storage_pool": settings.STORAGE_POOL_NAME}
    try:
        found = host_capacity_read(uri=settings.LIBVIRT_URI, pool=settings.STORAGE_POOL_NAME)
    except ServiceError as exc:
        log.warning("host %s: default capacity kept. %s", LOCAL_HOST_NAME, exc.message)
    else:
        defaults |= {"capacity_vcpus": found.cpus, "capacity_memory_mib": found.memory_mib}
        if found.pool_gib is not None:
            defaults["capacity_disk_gib"] = found.pool_gib
    host, created = Host.objects.get_or_create(name=LOCAL_HOST_NAME, defaults=defaults)
    if created:
        log.info(
            "registered host %s at %s: %s vCPUs, %s MiB, %s GiB",
            host.name,
            host.uri,
            host.capacity_vcpus,
            host.capacity_memory_mib,
            host.capacity_disk_gib,
        )
    return host


def host_register(*, name: str, uri: str, console_address: str) -> Host:
    """Register (or update) host `name` at `uri`, with the capacity it really has, and
    check it once so placement may use it at once. Idempotent: a lab host that comes up
    again keeps its row, its desktops and the admin's changes to its capacity."""
    uri = host_check_uri(uri)
    console_address = _checked_address(console_address)
    found = host_capacity_read(uri=uri, pool=settings.STORAGE_POOL_NAME)
    defaults = {
        "capacity_vcpus": found.cpus,
        "capacity_memory_mib": found.memory_mib,
        "storage_pool": settings.STORAGE_POOL_NAME,
    }
    if found.pool_gib is not None:
        defaults["capacity_disk_gib"] = found.pool_gib
    host, created = Host.objects.get_or_create(
        name=name, defaults={"uri": uri, "console_address": console_address, **defaults}
    )
    if not created:
        Host.objects.filter(pk=host.pk).update(
            uri=uri, console_address=console_address, enabled=True
        )
        host.refresh_from_db()
    audit_record(action="host.register", name=name, uri=uri, created=created)
    host_heartbeat(host=host)
    host.refresh_from_db()  # the heartbeat's verdict
    return host


def _checked_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise ServiceError(f"{address!r} is not an IP address (the console address).") from None


def host_disable(*, name: str) -> None:
    """Take host `name` out of placement (its row, desktops and history stay)."""
    if not Host.objects.filter(name=name).update(enabled=False):
        raise ServiceError(f"There is no host named {name!r}.")
    audit_record(action="host.disable", name=name)
