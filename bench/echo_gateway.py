"""``manage.py consoleproxy`` (the websockify gateway) with the bench's echo-display seam
installed (bench/echo_seam.py): ``python bench/echo_gateway.py HOST:PORT``."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django

django.setup()

from django.core.management import call_command  # noqa: E402

from bench.echo_seam import install  # noqa: E402

install()
call_command("consoleproxy", "--listen", sys.argv[1])
