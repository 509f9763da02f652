"""The libvirt domain of a desktop: a pure function of the desktop, its host and what
the worker prepared for it (its disk's path and its NICs). Nothing here calls libvirt or
writes anything; `vms.services.desktops.lifecycle.desktop_domain_prepare` makes the disk
and the networks ready, then builds the domain here.
"""

from __future__ import annotations

import secrets

from django.utils import timezone

from vms.hypervisor import DomainSpec, GraphicsType, InterfaceSpec
from vms.models import Desktop, Host


def domain_spec(
    desktop: Desktop,
    *,
    host: Host,
    disk_path: str,
    virt_type: str,
    interfaces: tuple[InterfaceSpec, ...],
) -> DomainSpec:
    """The libvirt domain of `desktop` on `host`, over the disk at `disk_path`.

    The console password is random, expired from the start and never kept: nobody can
    reach the console until a console session sets a short-lived password of its own.
    """
    return DomainSpec(
        name=desktop.domain_name,
        vcpus=desktop.vcpus,
        memory_mib=desktop.memory_mib,
        disk_path=disk_path,
        graphics=GraphicsType(desktop.template.console_type),
        virt_type="kvm" if virt_type == "kvm" else "qemu",
        title=desktop.name,
        description=f"{desktop.template.name} for {desktop.owner.get_username()}",
        desktop_id=str(desktop.pk),
        console_password=secrets.token_urlsafe(6),
        console_password_valid_to=timezone.now(),
        listen_address=host.console_address,
        interfaces=interfaces,
    )
