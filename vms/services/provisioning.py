"""Worker-side desktop work: the libvirt half of every action, run by Celery tasks.

Every function here loads the desktop by id, does nothing unless the desktop is in the
state its action expects (so a task delivered twice does no harm), and writes state by
compare-and-set. A permanent HypervisorError ends in `error` with a message a person can
act on; a transient one propagates so the task retries.

Provisioning and booting may be cut at any point (a worker killed, libvirtd restarting)
and run again, or run twice at once (a message delivered twice, reconcile re-queueing a
slow task). Every step is idempotent: the volume and domain names are fixed per desktop,
clone and define return what exists, start accepts a running guest. The two paths that
create things also hold a per-desktop lock (`desktop_lock`) so that two runs never build
the same volume at the same moment; a run that finds the lock taken waits for it, then
sees from the state that the work is done.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from vms.hypervisor import DomainSpec, GraphicsType, Hypervisor, HypervisorError, PowerState
from vms.models import Desktop, DesktopStatus, Host
from vms.services import transitions
from vms.services.audit import audit_record
from vms.services.events import push_desktop_changed
from vms.services.hosts import host_virt_type, hypervisor_for
from vms.services.locks import DesktopBusy, desktop_lock
from vms.services.networks import interfaces_prepare, interfaces_release
from vms.settings_access import shutdown_timeout_s

log = logging.getLogger(__name__)
S = DesktopStatus
GIB = 1024**3
# What libvirt says when a disk another QEMU holds is refused (lockd, then QEMU's own lock).
LEASE_HELD_HINTS = ("is locked", "resource busy", "lockspace", 'failed to get "write" lock')
__all__ = ["DesktopBusy"]  # raised through desktop_lock; the tasks catch it


def _load(desktop_id: UUID | str) -> Desktop | None:
    return Desktop.objects.select_related("host", "template", "owner").filter(pk=desktop_id).first()


def _hypervisor(desktop: Desktop) -> Hypervisor:
    """The hypervisor of the desktop's host (desktops are placed before any work)."""
    if desktop.host is None:
        raise HypervisorError(f"desktop {desktop.pk} is on no host", permanent=True)
    return hypervisor_for(desktop.host)


def _set_progress(desktop: Desktop, step: str) -> None:
    Desktop.objects.filter(pk=desktop.pk, status=desktop.status).update(progress=step)
    push_desktop_changed(desktop_id=desktop.pk)


def _advance(desktop: Desktop, *, old: str, new: str, **fields: object) -> bool:
    # The new state and its audit row commit together: nobody sees one without the other.
    with transaction.atomic():
        moved = transitions.compare_and_set(desktop_id=desktop.pk, old=old, new=new, **fields)
        if moved:
            desktop.status = new
            audit_record(action=f"desktop.{new}", desktop=desktop, old=old, new=new)
            push_desktop_changed(desktop_id=desktop.pk)
    return moved


def domain_spec(desktop: Desktop, *, on: Host | None = None) -> DomainSpec:
    """The libvirt domain of a desktop on its host (or on host `on`, which takes it over).

    The console password is random, expired from the start and never kept: nobody can
    reach the console until a console session sets a short-lived password of its own.
    """
    host = on or desktop.host
    assert host is not None
    return DomainSpec(
        name=desktop.domain_name,
        vcpus=desktop.vcpus,
        memory_mib=desktop.memory_mib,
        disk_path=_volume_path(desktop, host),
        graphics=GraphicsType(desktop.template.console_type),
        virt_type="kvm" if host_virt_type(host) == "kvm" else "qemu",
        title=desktop.name,
        description=f"{desktop.template.name} for {desktop.owner.get_username()}",
        desktop_id=str(desktop.pk),
        console_password=secrets.token_urlsafe(6),
        console_password_valid_to=timezone.now(),
        listen_address=host.console_address,
        interfaces=interfaces_prepare(desktop=desktop, host=host),
    )


def _volume_path(desktop: Desktop, host: Host) -> str:
    if desktop.restored_from_id is not None:
        from vms.services.backup_work import restored_volume_path

        return restored_volume_path(desktop, host)
    volume = hypervisor_for(host).clone_volume(
        pool=host.storage_pool,
        name=desktop.volume_name,
        base_path=desktop.base_image_path or desktop.template.base_image_path,
        capacity_bytes=desktop.disk_gib * GIB,
    )
    return volume.path


def desktop_provision(*, desktop_id: UUID | str) -> None:
    """Clone the disk, define the domain and boot it: provisioning -> starting -> running.

    A desktop already `starting` was provisioned by a run that was cut off before the
    guest ran (its message comes back after the worker died): this run boots it.
    """
    with desktop_lock(desktop_id):
        desktop = _load(desktop_id)
        if desktop is None:
            return
        if desktop.status == S.PROVISIONING:
            _guarded(desktop, lambda: _provision(desktop), cleanup=True)
        elif desktop.status == S.STARTING:
            _guarded(desktop, lambda: _boot_defined(desktop), cleanup=False)


def _provision(desktop: Desktop) -> None:
    from vms.services.disk_copies import CopyCancelled

    hypervisor = _hypervisor(desktop)
    _set_progress(desktop, "restoring" if desktop.restored_from_id else "cloning")
    try:
        spec = domain_spec(desktop)
    except CopyCancelled:  # a restore to this new desktop was cancelled: it is deleted
        _remove_if_deleted(desktop, hypervisor)
        return
    _set_progress(desktop, "defining")
    info = hypervisor.define_domain(spec)
    Desktop.objects.filter(pk=desktop.pk).update(domain_uuid=info.uuid)
    if not _advance(desktop, old=S.PROVISIONING, new=S.STARTING, progress="starting"):
        _remove_if_deleted(desktop, hypervisor)
        return
    _boot(desktop, hypervisor)


def _boot(desktop: Desktop, hypervisor: Hypervisor) -> None:
    hypervisor.start(name=desktop.domain_name)
    if _advance(desktop, old=S.STARTING, new=S.RUNNING, progress="ready", last_error=""):
        return
    # Force-stopped while it booted (the forced stop waits for this boot's lock): the
    # guest just started must not outlive that; power it off as the stop would.
    desktop.refresh_from_db(fields=["status"])
    if desktop.status == S.STOPPING:
        _power_off(desktop, force=True)


def desktop_boot(*, desktop_id: UUID | str) -> None:
    """Power on: starting -> running (a non-persistent desktop was reset when it stopped)."""
    with desktop_lock(desktop_id):
        desktop = _load(desktop_id)
        if desktop is None or desktop.status != S.STARTING:
            return
        _guarded(desktop, lambda: _boot_defined(desktop), cleanup=False)


def _boot_defined(desktop: Desktop) -> None:
    hypervisor = _hypervisor(desktop)
    # A desktop that failed before its domain existed is rebuilt from scratch.
    info = hypervisor.define_domain(domain_spec(desktop))
    Desktop.objects.filter(pk=desktop.pk).exclude(domain_uuid=info.uuid).update(
        domain_uuid=info.uuid
    )
    _boot(desktop, hypervisor)


def desktop_power_off(*, desktop_id: UUID | str, force: bool = False) -> None:
    """Shut the guest down (gracefully, then by force after the timeout): -> stopped."""
    if force:
        # A forced stop may come while the desktop boots: wait for the boot to let go
        # (a graceful stop holds no lock, so a forced one can still cut into it).
        with desktop_lock(desktop_id):
            _power_off_if_stopping(desktop_id=desktop_id, force=True)
    else:
        _power_off_if_stopping(desktop_id=desktop_id, force=False)


def _power_off_if_stopping(*, desktop_id: UUID | str, force: bool) -> None:
    desktop = _load(desktop_id)
    if desktop is None or desktop.status != S.STOPPING:
        return
    _guarded(desktop, lambda: _power_off(desktop, force=force), cleanup=False)


def _power_off(desktop: Desktop, *, force: bool) -> None:
    hypervisor = _hypervisor(desktop)
    if force:
        hypervisor.destroy(name=desktop.domain_name)
    else:
        hypervisor.shutdown(name=desktop.domain_name, timeout_s=shutdown_timeout_s())
    if not desktop.template.persistent:
        _reset_disk(desktop, hypervisor)
    _advance(desktop, old=S.STOPPING, new=S.STOPPED, progress="")


def _reset_disk(desktop: Desktop, hypervisor: Hypervisor) -> None:
    """Throw away a non-persistent desktop's changes: a fresh overlay over the base."""
    assert desktop.host is not None
    hypervisor.delete_volume(pool=desktop.host.storage_pool, name=desktop.volume_name)
    _volume_path(desktop, desktop.host)


def desktop_restart(*, desktop_id: UUID | str) -> None:
    """Reboot a running guest; the state stays `running`. The "reboot" progress note
    that `desktop_act` set (pages show "Rebooting…") is cleared once libvirt is done."""
    desktop = _load(desktop_id)
    if desktop is None or desktop.status != S.RUNNING:
        return
    _guarded(
        desktop,
        lambda: _hypervisor(desktop).reboot(name=desktop.domain_name),
        cleanup=False,
    )
    _clear_progress(desktop, step="reboot")


def _clear_progress(desktop: Desktop, *, step: str) -> None:
    """Drop the progress note `step` if it is still the desktop's note (a stop or a
    failure in between has already replaced it)."""
    if Desktop.objects.filter(pk=desktop.pk, progress=step).update(progress=""):
        push_desktop_changed(desktop_id=desktop.pk)


def desktop_migrate(*, desktop_id: UUID | str) -> None:
    """Move a running guest live to `migrate_to`: migrating -> running, on its new host.

    Idempotent for reconcile: a run that finds the guest already on the destination only
    records the move. On failure the guest keeps running where it was, and says why.
    """
    with desktop_lock(desktop_id):
        desktop = _load(desktop_id)
        if desktop is None or desktop.status != S.MIGRATING:
            return
        source, target = desktop.host, desktop.migrate_to
        assert source is not None
        if target is None or _runs_on(target, desktop):
            _migration_done(desktop, source=source, target=target)
            return
        started = time.monotonic()
        try:
            interfaces_prepare(desktop=desktop, host=target)  # its networks there first
            stats = hypervisor_for(source).migrate_live(
                name=desktop.domain_name, to_uri=target.uri, to_address=target.console_address
            )
        except HypervisorError as exc:
            _migration_failed(desktop, source=source, target=target, message=exc.message)
            return
        seconds = time.monotonic() - started
        _migration_done(desktop, source=source, target=target, seconds=seconds,
                        downtime_ms=stats.downtime_ms)  # fmt: skip


def desktop_recover(*, desktop_id: UUID | str) -> None:
    """Restart a lost host's desktop here, on `migrate_to`: recovering -> running.

    Persistent desktops start from their own disk, non-persistent ones from a fresh
    overlay. The lock manager refuses the disk while the old host's QEMU may still hold
    it: the desktop then keeps waiting (the recovery pass sends this again each round).
    """
    with desktop_lock(desktop_id):
        desktop = _load(desktop_id)
        if desktop is None or desktop.status != S.RECOVERING or desktop.migrate_to is None:
            return
        target, source = desktop.migrate_to, desktop.host
        hypervisor = hypervisor_for(target)
        try:
            if not desktop.template.persistent:
                hypervisor.delete_volume(pool=target.storage_pool, name=desktop.volume_name)
            hypervisor.define_domain(domain_spec(desktop, on=target))
            hypervisor.start(name=desktop.domain_name)
        except HypervisorError as exc:
            if exc.permanent and not _lease_held(exc):
                desktop_fail(desktop_id=desktop.pk, message=exc.message, cleanup=False)
            else:
                log.info("desktop %s waits to be recovered on %s: %s", desktop.pk, target, exc)
            return
        _recovered(desktop, source=source, target=target)


def _lease_held(exc: HypervisorError) -> bool:
    """Whether the disk is still held elsewhere: refused by the lock manager's lease, or by
    QEMU's own image lock (which comes first when both QEMUs share one kernel, or NFSv4)."""
    text = exc.message.lower()
    return any(hint in text for hint in LEASE_HELD_HINTS)


def _recovered(desktop: Desktop, *, source: Host | None, target: Host) -> None:
    note = f"Restarted on host {target.name} after host {source} stopped answering."
    with transaction.atomic():
        if transitions.compare_and_set(
            desktop_id=desktop.pk, old=S.RECOVERING, new=S.RUNNING,
            host=target, migrate_to=None, last_error=note, progress="ready",
        ):  # fmt: skip
            audit_record(action="desktop.recovered", desktop=desktop, source=str(source),
                         target=target.name, persistent=desktop.template.persistent)  # fmt: skip
            push_desktop_changed(desktop_id=desktop.pk)


def _runs_on(host: Host, desktop: Desktop) -> bool:
    try:
        return hypervisor_for(host).state(name=desktop.domain_name) is PowerState.running
    except HypervisorError:
        return False


def _migration_done(
    desktop: Desktop,
    *,
    source: Host,
    target: Host | None,
    seconds: float | None = None,
    downtime_ms: int | None = None,
) -> None:
    moved_to = target or source
    seconds = None if seconds is None else round(seconds, 2)
    _migration_settle(
        desktop, event="desktop.migrated", source=source, target=moved_to,
        fields={"host": moved_to}, seconds=seconds, downtime_ms=downtime_ms,
    )  # fmt: skip


def _migration_failed(desktop: Desktop, *, source: Host, target: Host, message: str) -> None:
    if not _runs_on(source, desktop):
        desktop_fail(desktop_id=desktop.pk, message=message, cleanup=False)
        return
    note = f"Migration to {target.name} failed; the desktop keeps running on {source.name}."
    _migration_settle(
        desktop, event="desktop.migration_failed", source=source, target=target,
        fields={"last_error": note}, message=message,
    )  # fmt: skip


def _migration_settle(
    desktop: Desktop,
    *,
    event: str,
    source: Host,
    target: Host,
    fields: dict[str, object],
    **detail: object,
) -> None:
    """migrating -> running with `fields` (once), its audit row and the live push."""
    with transaction.atomic():
        if transitions.compare_and_set(
            desktop_id=desktop.pk, old=S.MIGRATING, new=S.RUNNING, migrate_to=None, **fields
        ):
            audit_record(
                action=event, actor=None, desktop=desktop, source_ip=None,
                source=source.name, target=target.name, **detail,
            )  # fmt: skip
            push_desktop_changed(desktop_id=desktop.pk)


def desktop_teardown(*, desktop_id: UUID | str) -> None:
    """Remove the domain and the volume: deleting -> deleted. Nothing is left behind."""
    desktop = _load(desktop_id)
    if desktop is None or desktop.status != S.DELETING:
        return
    _guarded(desktop, lambda: _teardown(desktop), cleanup=False)


def _teardown(desktop: Desktop) -> None:
    _remove_resources(desktop, _hypervisor(desktop))
    if _advance(desktop, old=S.DELETING, new=S.DELETED, deleted_at=timezone.now(), progress=""):
        interfaces_release(desktop=desktop)


def _remove_resources(desktop: Desktop, hypervisor: Hypervisor) -> None:
    assert desktop.host is not None
    hypervisor.undefine(name=desktop.domain_name)
    hypervisor.delete_volume(pool=desktop.host.storage_pool, name=desktop.volume_name)


def _remove_if_deleted(desktop: Desktop, hypervisor: Hypervisor) -> None:
    """A delete overtook provisioning: take away what provisioning just made."""
    status = Desktop.objects.filter(pk=desktop.pk).values_list("status", flat=True).first()
    if status in (S.DELETING, S.DELETED, None):
        _remove_resources(desktop, hypervisor)


def _guarded(desktop: Desktop, work: Callable[[], object], *, cleanup: bool) -> None:
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
    desktop = _load(desktop_id)
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
        audit_record(action="desktop.error", desktop=desktop, message=message)
        push_desktop_changed(desktop_id=desktop.pk)


def _cleanup_quietly(desktop: Desktop) -> None:
    try:
        _remove_resources(desktop, _hypervisor(desktop))
    except HypervisorError as exc:
        # Reconcile removes what is left once libvirt answers again.
        log.warning("cleanup of desktop %s left resources: %s", desktop.pk, exc.message)
