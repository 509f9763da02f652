"""The registry of long-job kinds: work that outlives a request by minutes (backups,
restores, template-version builds) and leaves things in a host's pool or libvirt while it
runs: a volume being written, a helper domain running a block job.

Each kind registers itself where its work lives (`long_job_register`). Reconcile keeps
what every registered kind has under way (`long_job_volumes`, `long_job_domains`) instead
of taking it for an orphan, and the beat's clean-up runs every kind's clean-up after
killed workers (`long_jobs_cleanup`): a new kind is one registration, never three lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.db import models


def _nothing() -> set[str]:
    return set()


@dataclass(frozen=True)
class LongJobKind:
    """One kind of long job (see the module docstring)."""

    name: str
    # The rows that are its jobs (each reports its percent in `progress`).
    model: type[models.Model]
    # After killed workers: fail what no worker runs any more and remove what it left;
    # how many jobs it failed.
    cleanup: Callable[[], int]
    # The pool volumes its jobs under way are writing (reconcile keeps them).
    volumes: Callable[[], set[str]] = _nothing
    # The helper domains of its jobs under way (reconcile keeps them).
    domains: Callable[[], set[str]] = _nothing


_KINDS: dict[str, LongJobKind] = {}


def long_job_register(kind: LongJobKind) -> LongJobKind:
    """Register `kind` (once per name: a second one under the same name is a mistake)."""
    if _KINDS.get(kind.name, kind) is not kind:
        raise ValueError(f"long-job kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def long_job_kinds() -> dict[str, LongJobKind]:
    """Every registered kind by name, once the services that register them are loaded."""
    from vms.services.core.discovery import services_load

    services_load()
    return dict(_KINDS)


def long_job_volumes() -> set[str]:
    """The pool volumes of every kind's jobs under way."""
    return {name for kind in long_job_kinds().values() for name in kind.volumes()}


def long_job_domains() -> set[str]:
    """The helper domains of every kind's jobs under way."""
    return {name for kind in long_job_kinds().values() for name in kind.domains()}


def long_jobs_cleanup() -> dict[str, int]:
    """Every kind's clean-up after killed workers; how many jobs each failed."""
    return {name: kind.cleanup() for name, kind in long_job_kinds().items()}
