"""Register a hypervisor host from the command line (scripts/lab-host uses it):

manage.py host_register NAME --uri qemu+tls://10.213.1.2/system --console-address 10.213.1.2 \
    [--virt-type kvm|qemu]
manage.py host_register NAME --disable
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from vms.hypervisor.kvmprobe import run_kvm_probe
from vms.services.core.errors import ServiceError
from vms.services.fleet.membership import host_disable, host_register


class Command(BaseCommand):
    help = "Register (or update) a hypervisor host, or take it out of placement."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--uri", help="how to reach its libvirt")
        parser.add_argument("--console-address", default="127.0.0.1")
        parser.add_argument(
            "--virt-type",
            choices=["kvm", "qemu", "this-machine"],
            default="",
            help="KVM or TCG for its guests (default: from its libvirt's capabilities); "
            "this-machine: what this machine's own KVM probe finds (lab hosts share its kernel)",
        )
        parser.add_argument(
            "--disable",
            action="store_true",
            help="take it out of the fleet: its stopped desktops go to other hosts first; "
            "refused, with the list, while other desktops are left on it",
        )

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
                virt_type=_virt_type(options["virt_type"]),
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        health = "healthy" if host.last_check_ok else f"unhealthy: {host.last_check_error}"
        self.stdout.write(f"host {host.name} at {host.uri}, {health}")


def _virt_type(choice: str) -> str:
    if choice != "this-machine":
        return choice
    return "kvm" if run_kvm_probe() else "qemu"
