"""manage.py spiceproxy: run the SPICE proxy (HTTP CONNECT for remote-viewer) in the
foreground.

`.vv` files name it in their `proxy=` key (SPICE_PROXY_URL); run it where it can reach the
hypervisors' console addresses. SIGINT or SIGTERM stops it; open connection sets are closed
and their sessions recorded.
"""

from __future__ import annotations

import asyncio
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vms.console.gateway import parse_listen
from vms.console.spiceproxy import serve


class Command(BaseCommand):
    help = "Run the SPICE proxy that remote-viewer reaches SPICE desktops through."

    def add_arguments(self, parser: ArgumentParser) -> None:
        host, port = settings.SPICE_PROXY_BIND
        parser.add_argument(
            "--listen",
            default=f"{host}:{port}",
            metavar="HOST:PORT",
            help=f"address to listen on (default {host}:{port}; setting SPICE_PROXY_BIND)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            host, port = parse_listen(options["listen"])
        except ValueError as exc:
            raise CommandError(f"--listen: {exc}") from exc
        self.stdout.write(f"SPICE proxy on {host}:{port} (clients use {settings.SPICE_PROXY_URL})")
        self.stdout.flush()
        try:
            asyncio.run(serve(host=host, port=port))
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.stdout.write("SPICE proxy stopped.")
