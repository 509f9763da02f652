"""manage.py portal_setup: first-run set-up for a single machine (idempotent)."""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from vms.services.demo import DEMO_USERS, setup_single_machine


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
        self.stdout.write("Set-up done.")
