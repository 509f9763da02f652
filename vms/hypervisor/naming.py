"""Names of domains and volumes that belong to the portal.

Every name is ``<prefix><slug>`` where the slug is derived from the desktop id. Names only use
``[a-z0-9-]`` (safe in file names, QEMU's ``-name`` and shell-free log lines), stay short, and
two different desktop ids never map to the same name: when the id had to be changed to fit
(other characters, too long), a hash of the original id is appended.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = [
    "MAX_NAME_LENGTH",
    "VOLUME_SUFFIX",
    "domain_name",
    "is_ours",
    "validate_prefix",
    "volume_name",
]

MAX_NAME_LENGTH: Final = 63
VOLUME_SUFFIX: Final = ".qcow2"
_HASH_LENGTH: Final = 12
_PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_BAD_CHARS: Final = re.compile(r"[^a-z0-9]+")
_SLUG_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]*")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a usable name prefix, else raise ``ValueError``.

    A prefix starts with a letter, uses ``[a-z0-9-]`` and has at most 32 characters.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"invalid name prefix {prefix!r}: use 1-32 characters of [a-z0-9-], "
            "starting with a letter"
        )
    return prefix


def domain_name(prefix: str, desktop_id: str) -> str:
    """The libvirt domain name for a desktop, e.g. ``domain_name("desk-", "42") == "desk-42"``."""
    validate_prefix(prefix)
    raw = str(desktop_id)
    if not raw:
        raise ValueError("desktop id must not be empty")
    slug = _BAD_CHARS.sub("-", raw.lower()).strip("-")
    budget = MAX_NAME_LENGTH - len(prefix)
    if slug == raw and len(slug) <= budget:
        return prefix + slug
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    room = budget - _HASH_LENGTH - 1
    head = slug[:room].strip("-")
    return f"{prefix}{head}-{digest}" if head else f"{prefix}{digest}"


def volume_name(prefix: str, desktop_id: str) -> str:
    """The storage volume (file) name of a desktop's disk: its domain name plus ``.qcow2``."""
    return domain_name(prefix, desktop_id) + VOLUME_SUFFIX


def is_ours(name: str, prefix: str) -> bool:
    """Whether a domain or volume name was made by ``domain_name``/``volume_name`` with prefix."""
    if not name.startswith(prefix) or len(name) <= len(prefix):
        return False
    stem = name.removesuffix(VOLUME_SUFFIX)
    rest = stem[len(prefix) :]
    return len(stem) <= MAX_NAME_LENGTH and _SLUG_RE.fullmatch(rest) is not None
