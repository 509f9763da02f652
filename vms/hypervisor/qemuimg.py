"""qemu-img on backup files (local paths in BACKUP_DIR): check, compare, link, flatten.

Always ``-f qcow2`` (never a format probe). Errors become ``HypervisorError`` (permanent:
the same file fails the same way again).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Final

from .errors import HypervisorError

__all__ = ["image_check", "image_compare", "image_flatten", "image_link", "image_rebase_away"]

_TIMEOUT_S: Final = 3600


def _run(args: list[str], *, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"qemu-img {args[0]} could not run: {exc}", permanent=True) from exc
    if done.returncode not in ok:
        lines = done.stderr.strip().splitlines() or ["no message"]
        raise HypervisorError(f"qemu-img {args[0]} failed: {lines[-1]}", permanent=True)
    return done


def image_check(path: str) -> None:
    """``qemu-img check`` of every file of the chain: no corruption, no errors."""
    done = _run(["check", "-f", "qcow2", "--output=json", path], ok=(0, 2, 3))
    report = json.loads(done.stdout or "{}")
    if report.get("corruptions") or report.get("check-errors") or done.returncode == 2:
        raise HypervisorError(f"qemu-img check found damage in {path}: {report}", permanent=True)


def image_chain(path: str) -> list[dict[str, object]]:
    """``qemu-img info --backing-chain`` of ``path``, newest first."""
    done = _run(["info", "-f", "qcow2", "--backing-chain", "-U", "--output=json", path])
    chain: list[dict[str, object]] = json.loads(done.stdout)
    return chain


def image_compare(a: str, b: str) -> bool:
    """Whether two images (each read through its backing chain) hold the same data."""
    return _run(["compare", "-U", "-f", "qcow2", "-F", "qcow2", a, b], ok=(0, 1)).returncode == 0


def image_link(path: str, *, parent: str) -> None:
    """Make ``path`` (an incremental backup: only changed clusters) name ``parent`` as its
    backing file, relative to its own folder; metadata only."""
    relative = os.path.relpath(parent, os.path.dirname(path))
    _run(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", relative, path])


def image_rebase_away(path: str, *, new_parent: str | None) -> None:
    """Copy into ``path`` what its backing file gives it, so that it rests on
    ``new_parent`` instead (None: standalone); the data it reads stays the same."""
    if new_parent is None:
        _run(["rebase", "-f", "qcow2", "-b", "", path])
        return
    relative = os.path.relpath(new_parent, os.path.dirname(path))
    _run(["rebase", "-f", "qcow2", "-F", "qcow2", "-b", relative, path])


def image_flatten(source: str, target: str) -> None:
    """A standalone qcow2 ``target`` with everything ``source``'s chain reads."""
    _run(["convert", "-f", "qcow2", "-O", "qcow2", source, target])
