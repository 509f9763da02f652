"""Templates: import a qcow2 golden image and describe the desktops made from it."""

from __future__ import annotations

import logging
import re
import secrets

from django.db import transaction

from vms.hypervisor import HypervisorError
from vms.models import Host, Template
from vms.services.catalog.images import ImageFacts, ImageRejected, image_inspect
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)


def base_volume_name(*, template_name: str, token: str) -> str:
    """Pool volume name of a template's base image (never carries the desktop prefix).

    The slug is for people reading `virsh vol-list`; the token makes the name unique, since
    names like "Win 11" and "win-11" share a slug, and one template's import must never
    find, replace or delete another template's base.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", template_name.lower()).strip("-")[:40] or "image"
    return f"base-{slug}-{token}.qcow2"


def base_volume_name_new(*, template_name: str) -> str:
    """A base volume name no other template has (48 random bits)."""
    return base_volume_name(template_name=template_name, token=secrets.token_hex(6))


def template_import(
    *,
    name: str,
    image_path: str,
    vcpus: int = 1,
    memory_mib: int = 256,
    disk_gib: int = 1,
    console_type: str = "vnc",
    os_label: str = "",
    description: str = "",
) -> Template:
    """Copy a checked qcow2 image into every enabled host's pool and create the template."""
    template = Template(
        name=name,
        description=description,
        os_label=os_label,
        vcpus=vcpus,
        memory_mib=memory_mib,
        console_type=console_type,
        disk_gib=disk_gib,
    )
    template_save_imported(template=template, image_path=image_path)
    return template


def template_save_imported(*, template: Template, image_path: str) -> None:
    """Validate `template`, upload its base image to the hosts, then save it.

    The upload runs outside any transaction: it can take a while, and holding a write
    lock meanwhile would stall every other writer (on SQLite, all of them).
    """
    facts = image_inspect(path=image_path)
    template.disk_gib = max(template.disk_gib, -(-facts.virtual_size // 1024**3))
    template.full_clean(exclude=["base_image_path", "assigned_users", "assigned_groups"])
    volume = base_volume_name_new(template_name=template.name)
    hosts = list(Host.objects.filter(enabled=True))
    try:
        template.base_image_path = _upload_everywhere(hosts=hosts, volume=volume, facts=facts)
        with transaction.atomic():
            template.save()
            audit_record(
                action=AuditVerb.TEMPLATE_IMPORT,
                name=template.name,
                image=facts.path,
                volume=volume,
                leaked_clusters=facts.leaked_clusters,
            )
    except BaseException:
        # Nothing half-made: the random name means nobody else would ever reuse it.
        _remove_everywhere(hosts=hosts, volume=volume)
        raise


def _upload_everywhere(*, hosts: list[Host], volume: str, facts: ImageFacts) -> str:
    if not hosts:
        raise ImageRejected("No enabled host is registered to receive the image.")
    paths = set()
    for host in hosts:
        try:
            base = hypervisor_for(host).import_base_volume(
                pool=host.storage_pool, name=volume, source_path=facts.path
            )
        except HypervisorError as exc:
            raise ImageRejected(
                f"Host {host.name} could not take the image: {exc.message}"
            ) from exc
        paths.add(base.path)
    if len(paths) != 1:
        raise ImageRejected("The hosts' storage pools must share one path layout.")
    return paths.pop()


def _remove_everywhere(*, hosts: list[Host], volume: str) -> None:
    for host in hosts:
        try:
            hypervisor_for(host).delete_volume(pool=host.storage_pool, name=volume)
        except HypervisorError as exc:
            log.warning("could not remove base %s from host %s: %s", volume, host.name, exc)
