"""manage.py import_template: make a template from a qcow2 image (checked with qemu-img)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from vms.models import ConsoleType
from vms.services.catalog.templates import template_import
from vms.services.core.errors import ServiceError


class Command(BaseCommand):
    help = "Import a qcow2 image as a desktop template (copied into every enabled host's pool)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("image", help="path of the qcow2 image (in IMAGE_IMPORT_DIRS)")
        parser.add_argument("--name", required=True)
        parser.add_argument("--description", default="")
        parser.add_argument("--os", dest="os_label", default="")
        parser.add_argument("--vcpus", type=int, default=1)
        parser.add_argument("--memory-mib", type=int, default=256)
        parser.add_argument("--disk-gib", type=int, default=1)
        parser.add_argument("--console", choices=ConsoleType.values, default=ConsoleType.VNC)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            template = template_import(
                name=options["name"],
                image_path=options["image"],
                vcpus=options["vcpus"],
                memory_mib=options["memory_mib"],
                disk_gib=options["disk_gib"],
                console_type=options["console"],
                os_label=options["os_label"],
                description=options["description"],
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"Imported template {template.name!r} (id {template.pk}) "
            f"from {template.base_image_path}"
        )
