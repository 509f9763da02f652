"""The portal's ASGI application with the bench's echo-display seam (bench/echo_seam.py)
installed: ``daphne bench.echo_asgi:application``. Everything else is portal.asgi as is."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

from bench.echo_seam import install
from portal.asgi import application

install()

__all__ = ["application"]
