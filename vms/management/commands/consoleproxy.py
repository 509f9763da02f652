"""manage.py consoleproxy: run the websockify console gateway in the foreground.

For deployments that keep the hypervisors' networks away from the web tier: the gateway
runs where it can reach QEMU's VNC listeners, admits browsers with the same one-time
tickets as the same-origin relay, and forks one process per console. SIGINT or SIGTERM
stops it; open consoles are closed with 1001 and recorded.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vms.console.gateway import DEFAULT_LISTEN, parse_listen, run_gateway


class Command(BaseCommand):
    help = "Run the websockify console gateway (ws://HOST:PORT/ws/console/<desktop>/)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        default = getattr(settings, "CONSOLE_GATEWAY_LISTEN", "") or DEFAULT_LISTEN
        parser.add_argument(
            "--listen",
            default=default,
            metavar="HOST:PORT",
            help=f"address to listen on (default {default}; setting CONSOLE_GATEWAY_LISTEN)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            host, port = parse_listen(options["listen"])
        except ValueError as exc:
            raise CommandError(f"--listen: {exc}") from exc
        self.stdout.write(f"Console gateway on ws://{host}:{port}/ws/console/<desktop>/")
        self.stdout.flush()
        try:
            run_gateway(listen_host=host, listen_port=port)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.stdout.write("Console gateway stopped.")
