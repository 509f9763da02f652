"""Templates: import a qcow2 golden image and describe the desktops made from it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from vms.hypervisor import HypervisorError
from vms.models import Host, Template
from vms.services.audit import audit_record
from vms.services.errors import ServiceError
from vms.services.hosts import hypervisor_for


class ImageRejected(ServiceError):
    """The image file is missing, outside the allowed folders, or not a usable qcow2."""


@dataclass(frozen=True)
class ImageFacts:
    """What `qemu-img info` says about an image."""

    path: str
    format: str
    virtual_size: int


def image_inspect(*, path: str) -> ImageFacts:
    """Check that `path` lies in an allowed import folder and is a standalone qcow2 image."""
    real = _allowed_path(path)
    if not real.is_file():
        raise ImageRejected(f"Image {path} does not exist or is not a file.")
    info = _qemu_img_info(real)
    if info.get("format") != "qcow2":
        raise ImageRejected(f"Image {path} is {info.get('format', 'unreadable')}, not qcow2.")
    if info.get("backing-filename"):
        raise ImageRejected(f"Image {path} has a backing file; import a standalone image.")
    return ImageFacts(path=str(real), format="qcow2", virtual_size=int(str(info["virtual-size"])))


def _allowed_path(path: str) -> Path:
    real = Path(os.path.realpath(path))
    for folder in settings.IMAGE_IMPORT_DIRS:
        if real.is_relative_to(os.path.realpath(folder)):
            return real
    allowed = ", ".join(settings.IMAGE_IMPORT_DIRS)
    raise ImageRejected(f"Image {path} is outside the folders images may come from ({allowed}).")


def _qemu_img_info(path: Path) -> dict[str, object]:
    try:
        done = subprocess.run(
            ["qemu-img", "info", "--output=json", "--force-share", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageRejected(f"Could not inspect {path}: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "unknown error"
        raise ImageRejected(f"Image {path} is not a readable disk image: {reason}")
    return dict(json.loads(done.stdout))


def base_volume_name(template_name: str) -> str:
    """Pool volume name of a template's base image (never carries the desktop prefix)."""
    slug = re.sub(r"[^a-z0-9]+", "-", template_name.lower()).strip("-")[:40] or "image"
    return f"base-{slug}.qcow2"


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
    template.base_image_path = _upload_everywhere(name=template.name, facts=facts)
    with transaction.atomic():
        template.save()
        audit_record(action="template.import", name=template.name, image=facts.path)


def _upload_everywhere(*, name: str, facts: ImageFacts) -> str:
    hosts = list(Host.objects.filter(enabled=True))
    if not hosts:
        raise ImageRejected("No enabled host is registered to receive the image.")
    paths = set()
    for host in hosts:
        try:
            volume = hypervisor_for(host).import_base_volume(
                pool=host.storage_pool, name=base_volume_name(name), source_path=facts.path
            )
        except HypervisorError as exc:
            raise ImageRejected(
                f"Host {host.name} could not take the image: {exc.message}"
            ) from exc
        paths.add(volume.path)
    if len(paths) != 1:
        raise ImageRejected("The hosts' storage pools must share one path layout.")
    return paths.pop()
