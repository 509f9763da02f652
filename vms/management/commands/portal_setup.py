"""manage.py portal_setup: first-run set-up for a single machine (idempotent)."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from vms.hypervisor import HypervisorError
from vms.models import Host, Network
from vms.services.demo import DEMO_USERS, DESKTOPS_NETWORK, setup_single_machine
from vms.services.fleet.hosts import LOCAL_HOST_NAME
from vms.services.networks.desktop_networks import networks_ensure


class Command(BaseCommand):
    help = "Register the local libvirt host, the demo template and the demo users."

    def handle(self, *args: Any, **options: Any) -> None:
        env_passwords = {
            name: os.environ[f"DEMO_{name.upper()}_PASSWORD"]
            for name in DEMO_USERS
            if os.environ.get(f"DEMO_{name.upper()}_PASSWORD")
        }
        for login in setup_single_machine(env_passwords=env_passwords):
            if login.from_env:
                self.stdout.write(f"Created user {login.username} (password from the environment)")
            else:
                # Printed once, here; it is not stored anywhere.
                self.stdout.write(f"Created user {login.username} with password {login.password}")
        self._network_on_this_machine()
        self.stdout.write("Set-up done.")

    def _network_on_this_machine(self) -> None:
        """The `desktops` network on the machine's own host, now (reconcile keeps it)."""
        host = Host.objects.filter(name=LOCAL_HOST_NAME).first()
        network = Network.objects.filter(name=DESKTOPS_NETWORK).first()
        if host is None or network is None:
            return
        try:
            networks_ensure(host=host, networks=[network])
        except HypervisorError as exc:
            self.stderr.write(f"Network {network.name} is not up on {host.name}: {exc.message}")
            return
        self.stdout.write(f"Network {network.name} ({network.subnet}) is up on {host.name}")
