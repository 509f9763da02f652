"""The worker kit: what every worker function of a desktop action uses.

`desktop_worker` owns a worker function's run, as NetBox's `JobRunner` owns a job's: it
takes the desktop's lock, loads the desktop, skips one that vanished or is in a state
the work does not apply to (a task delivered twice does nothing the second time), and
clears the action's busy note when the work ends, done or failed. Inside it, the kit's
helpers: loading the desktop, reaching its host's hypervisor, its progress note, moving its state
with the audit row and the live push (`desktop_advance`), turning a permanent
HypervisorError into `error` (`desktop_guarded`, `desktop_fail`) and removing what a
desktop had on its host. The workers themselves are `vms.services.desktops.lifecycle`
(power and provisioning), `vms.services.disks` (snapshots, backups, restores) and
`vms.services.fleet` (migration, recovery).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, cast
from uuid import UUID

from django.db import transaction

from vms.hypervisor import Hypervisor, HypervisorError
from vms.models import Desktop, DesktopStatus
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.locks import DesktopBusy, desktop_lock
from vms.services.desktops import transitions
from vms.services.desktops.events import push_desktop_changed
from vms.services.fleet.hosts import hypervisor_for

log = logging.getLogger(__name__)
S = DesktopStatus


@dataclass(frozen=True)
class WorkerRules:
    """How `desktop_worker` runs one worker function (kept on it as `worker_rules`)."""

    # Take the desktop's lock (a callable: decided by the worker's keyword arguments).
    lock: bool | Callable[..., bool]
    # The states the work applies to; None: any (the work reads its own pending rows).
    when: frozenset[str] | None
    # The action's busy note (its name, set by the request) to clear when the work ends.
    busy: str


class DesktopWorker(Protocol):
    """A worker function as tasks call it: by the desktop's id."""

    worker_rules: WorkerRules

    def __call__(self, *, desktop_id: UUID | str, **kwargs: Any) -> None: ...


def desktop_worker(
    *,
    when: Collection[str] | None = None,
    busy: str = "",
    lock: bool | Callable[..., bool] = True,
) -> Callable[[Callable[..., None]], DesktopWorker]:
    """Make `work(desktop, **kwargs)` a worker function called as `f(desktop_id=...,
    **kwargs)`: under the desktop's lock (`lock`), the desktop loaded; nothing is done
    when it vanished or its state is not among `when`. The busy note `busy` is cleared
    when the work ends, done or failed, but not when it will be tried again (a transient
    hypervisor error, or the lock held by another run: the task retries, the action is
    still under way)."""
    rules = WorkerRules(lock=lock, when=None if when is None else frozenset(when), busy=busy)

    def wrap(work: Callable[..., None]) -> DesktopWorker:
        @functools.wraps(work)
        def run(*, desktop_id: UUID | str, **kwargs: Any) -> None:
            locked = rules.lock(**kwargs) if callable(rules.lock) else rules.lock
            held: AbstractContextManager[None] = (
                desktop_lock(desktop_id) if locked else nullcontext()
            )
            with held:
                desktop = desktop_load(desktop_id)
                if desktop is None or (rules.when is not None and desktop.status not in rules.when):
                    return
                try:
                    work(desktop, **kwargs)
                except Exception as exc:
                    if rules.busy and not _retried(exc):
                        desktop_progress_clear(desktop, step=rules.busy)
                    raise
                if rules.busy:
                    desktop_progress_clear(desktop, step=rules.busy)

        run.__dict__["worker_rules"] = rules
        return cast(DesktopWorker, run)

    return wrap


def _retried(exc: Exception) -> bool:
    """Whether the task runs the work again after `exc` (vms.tasks)."""
    return isinstance(exc, DesktopBusy) or (isinstance(exc, HypervisorError) and not exc.permanent)


def desktop_load(desktop_id: UUID | str) -> Desktop | None:
    return Desktop.objects.select_related("host", "template", "owner").filter(pk=desktop_id).first()


def desktop_hypervisor(desktop: Desktop) -> Hypervisor:
    """The hypervisor of the desktop's host (desktops are placed before any work)."""
    if desktop.host is None:
        raise HypervisorError(f"desktop {desktop.pk} is on no host", permanent=True)
    return hypervisor_for(desktop.host)


def desktop_progress_set(desktop: Desktop, step: str) -> None:
    Desktop.objects.filter(pk=desktop.pk, status=desktop.status).update(progress=step)
    push_desktop_changed(desktop_id=desktop.pk)


def desktop_advance(desktop: Desktop, *, old: str, new: str, **fields: object) -> bool:
    # The new state and its audit row commit together: nobody sees one without the other.
    with transaction.atomic():
        moved = transitions.compare_and_set(desktop_id=desktop.pk, old=old, new=new, **fields)
        if moved:
            desktop.status = new
            audit_record(action=AuditVerb(f"desktop.{new}"), desktop=desktop, old=old, new=new)
            push_desktop_changed(desktop_id=desktop.pk)
    return moved


def desktop_progress_clear(desktop: Desktop, *, step: str) -> None:
    """Drop the progress note `step` if it is still the desktop's note (a stop or a
    failure in between has already replaced it)."""
    if Desktop.objects.filter(pk=desktop.pk, progress=step).update(progress=""):
        push_desktop_changed(desktop_id=desktop.pk)


def desktop_guarded(desktop: Desktop, work: Callable[[], object], *, cleanup: bool) -> None:
    """Run `work`; a permanent hypervisor error puts the desktop in `error`."""
    try:
        work()
    except HypervisorError as exc:
        if not exc.permanent:
            raise
        desktop_fail(desktop_id=desktop.pk, message=exc.message, cleanup=cleanup)


def desktop_fail(*, desktop_id: UUID | str, message: str, cleanup: bool) -> None:
    """Put a desktop in `error` with `message`; with `cleanup`, remove half-made resources
    (used when provisioning fails, so that nothing is left half-created)."""
    desktop = desktop_load(desktop_id)
    if desktop is None or desktop.status in (S.DELETED, S.ERROR):
        return
    log.warning("desktop %s failed: %s", desktop.pk, message)
    if cleanup and desktop.host is not None:
        _cleanup_quietly(desktop)
    with transaction.atomic():
        transitions.move_from_any(
            desktop_id=desktop.pk,
            allowed_from=transitions.sources_of(S.ERROR),
            new=S.ERROR,
            last_error=message,
            progress="",
        )
        audit_record(action=AuditVerb.DESKTOP_ERROR, desktop=desktop, message=message)
        push_desktop_changed(desktop_id=desktop.pk)


def _cleanup_quietly(desktop: Desktop) -> None:
    try:
        desktop_resources_remove(desktop, desktop_hypervisor(desktop))
    except HypervisorError as exc:
        # Reconcile removes what is left once libvirt answers again.
        log.warning("cleanup of desktop %s left resources: %s", desktop.pk, exc.message)


def desktop_resources_remove(desktop: Desktop, hypervisor: Hypervisor) -> None:
    assert desktop.host is not None
    hypervisor.undefine(name=desktop.domain_name)
    hypervisor.delete_volume(pool=desktop.host.storage_pool, name=desktop.volume_name)
