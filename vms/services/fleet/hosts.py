"""Hypervisor hosts: reaching their hypervisor, reading their capacity, the local host.

The heartbeat is `vms.services.fleet.heartbeat`; registering, maintenance and draining
are `vms.services.fleet.membership`; recovering a lost host's desktops is
`vms.services.fleet.recovery`."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

from django.conf import settings

from vms.hypervisor import HostCapacity, Hypervisor, HypervisorError, backend_for, get_hypervisor
from vms.models import Host
from vms.services.core.errors import ServiceError

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
