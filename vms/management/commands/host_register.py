"""Register a hypervisor host from the command line (scripts/lab-host uses it):

manage.py host_register NAME --uri qemu+tcp://10.213.1.2/system --console-address 10.213.1.2
manage.py host_register NAME --disable
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vms.services.errors import ServiceError
from vms.services.fleet import host_disable, host_register


class Command(BaseCommand):
    help = "Register (or update) a hypervisor host, or take it out of placement."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--uri", help="how to reach its libvirt")
        parser.add_argument("--console-address", default="127.0.0.1")
        parser.add_argument("--disable", action="store_true", help="stop placing desktops there")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["disable"]:
                host_disable(name=options["name"])
                self.stdout.write(f"host {options['name']} disabled")
                return
            if not options["uri"]:
                raise CommandError("--uri is required to register a host")
            host = host_register(
                name=options["name"],
                uri=options["uri"],
                console_address=options["console_address"],
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        health = "healthy" if host.last_check_ok else f"unhealthy: {host.last_check_error}"
        self.stdout.write(f"host {host.name} at {host.uri}, {health}")
