"""The portal's own Redis: the default when REDIS_URL is unset.

The set-up (scripts/portal-redis, run by scripts/setup.sh) starts a redis-server of the
portal's own on 127.0.0.1:6380 with a password it generates into
/var/lib/desktop-portal/redis/password (mode 0600), so that a Redis a desktop or a local
user can reach is not an open one: whoever writes to Redis can forge console tickets. A
machine's shared Redis on 6379, if any, is left alone. An explicit REDIS_URL wins.

This module only builds URLs; it never logs them (they carry the password).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

HOST = "127.0.0.1"
PORT = 6380


def redis_dir() -> Path:
    return Path(os.environ.get("PORTAL_REDIS_DIR", "/var/lib/desktop-portal/redis"))


def password() -> str:
    """The generated password, or "" when the set-up has not made one (or this user may
    not read it): the server then refuses the connection, and /healthz says so."""
    try:
        return (redis_dir() / "password").read_text().strip()
    except OSError:
        return ""


def url(*, db: int) -> str:
    """redis://:<password>@127.0.0.1:6380/<db>."""
    secret = password()
    auth = f":{quote(secret, safe='')}@" if secret else ""
    return f"redis://{auth}{HOST}:{PORT}/{db}"
