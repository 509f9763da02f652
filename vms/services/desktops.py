"""User-facing desktop actions: launch, start, stop, force-stop, reboot, delete.

Each one checks the state table, writes the new state by compare-and-set, records an
audit event and queues the worker task on commit. The libvirt work happens in
`vms.services.provisioning`, run by the Celery tasks.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction

from vms.hypervisor.naming import domain_name, volume_name
from vms.models import Desktop, DesktopStatus, Template
from vms.roles import is_admin
from vms.selectors import templates_for_user
from vms.services import transitions
from vms.services.audit import audit_record
from vms.services.errors import InvalidTransition, NotAssigned
from vms.services.events import push_desktop_changed
from vms.services.placement import host_choose
from vms.services.queue import broker_check, enqueue_desktop_task
from vms.services.quotas import quota_check
from vms.settings_access import name_prefix

S = DesktopStatus
NAME_MAX = 100
VERBS = {S.STARTING: "started", S.STOPPING: "stopped", S.DELETING: "deleted"}


def desktop_create(
    *, user: AbstractBaseUser, template_id: int, name: str = "", source_ip: str | None = None
) -> Desktop:
    """Launch a new desktop of a template assigned to `user`.

    The quota check and the insert share one transaction under a lock on the user's row,
    so concurrent launches by one user cannot overshoot the quota.
    """
    broker_check()
    template = templates_for_user(user=user).filter(pk=template_id).first()
    if template is None:
        raise NotAssigned("This template is not available to you.")
    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=user.pk)
        quota_check(user=user, template=template)
        desktop = _insert(user=user, template=template, name=name)
        audit_record(
            action="desktop.create",
            actor=user,
            desktop=desktop,
            source_ip=source_ip,
            template=template.name,
        )
        push_desktop_changed(desktop_id=desktop.pk)
        enqueue_desktop_task("provision_desktop", desktop=desktop)
    return desktop


def _insert(*, user: AbstractBaseUser, template: Template, name: str) -> Desktop:
    host = host_choose(template=template)
    desktop = Desktop(
        owner=user,
        template=template,
        host=host,
        vcpus=template.vcpus,
        memory_mib=template.memory_mib,
        disk_gib=template.disk_gib,
        name=(name.strip() or template.name)[:NAME_MAX],
        progress="queued",
    )
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    desktop.save(force_insert=True)
    return desktop


def desktop_start(
    *, actor: AbstractBaseUser, desktop: Desktop, source_ip: str | None = None
) -> None:
    """Power on a stopped (or failed) desktop."""
    _move_and_queue(
        actor=actor,
        desktop=desktop,
        new=S.STARTING,
        allowed_from=[S.STOPPED, S.ERROR],
        task="start_desktop",
        action="desktop.start",
        source_ip=source_ip,
    )


def desktop_stop(
    *, actor: AbstractBaseUser, desktop: Desktop, source_ip: str | None = None
) -> None:
    """Ask the guest to shut down; the worker powers it off after a timeout."""
    _move_and_queue(
        actor=actor,
        desktop=desktop,
        new=S.STOPPING,
        allowed_from=[S.RUNNING],
        task="stop_desktop",
        action="desktop.stop",
        source_ip=source_ip,
    )


def desktop_force_stop(
    *, actor: AbstractBaseUser, desktop: Desktop, source_ip: str | None = None
) -> None:
    """Pull the plug: power off at once, also while booting or stopping gracefully."""
    broker_check()
    with transaction.atomic():
        left: str | None
        if Desktop.objects.filter(pk=desktop.pk, status=S.STOPPING).exists():
            left = S.STOPPING
        else:
            left = transitions.move_from_any(
                desktop_id=desktop.pk,
                new=S.STOPPING,
                allowed_from=transitions.sources_of(S.STOPPING),
            )
        _after_move(
            actor=actor,
            desktop=desktop,
            left=left,
            new=S.STOPPING,
            action="desktop.force_stop",
            source_ip=source_ip,
        )
        enqueue_desktop_task("stop_desktop", desktop=desktop, force=True)


def desktop_reboot(
    *, actor: AbstractBaseUser, desktop: Desktop, source_ip: str | None = None
) -> None:
    """Reboot a running desktop (its state stays `running`)."""
    broker_check()
    with transaction.atomic():
        if not Desktop.objects.filter(pk=desktop.pk, status=S.RUNNING).exists():
            raise InvalidTransition(_refusal(desktop, "rebooted"))
        audit_record(action="desktop.reboot", actor=actor, desktop=desktop, source_ip=source_ip)
        enqueue_desktop_task("reboot_desktop", desktop=desktop)


def desktop_delete(
    *, actor: AbstractBaseUser, desktop: Desktop, source_ip: str | None = None
) -> None:
    """Delete a desktop: its domain and volume are removed by the worker.

    Only the owner and admins may delete; help-desk staff may not.
    """
    if actor.pk != desktop.owner_id and not is_admin(actor):
        raise PermissionDenied("Only the owner or an administrator may delete a desktop.")
    _move_and_queue(
        actor=actor,
        desktop=desktop,
        new=S.DELETING,
        allowed_from=transitions.sources_of(S.DELETING),
        task="delete_desktop",
        action="desktop.delete",
        source_ip=source_ip,
    )


def _move_and_queue(
    *,
    actor: AbstractBaseUser,
    desktop: Desktop,
    new: str,
    allowed_from: list[str],
    task: str,
    action: str,
    source_ip: str | None,
) -> None:
    broker_check()
    with transaction.atomic():
        left = transitions.move_from_any(
            desktop_id=desktop.pk, allowed_from=allowed_from, new=new, progress="", last_error=""
        )
        _after_move(
            actor=actor, desktop=desktop, left=left, new=new, action=action, source_ip=source_ip
        )
        enqueue_desktop_task(task, desktop=desktop)


def _after_move(
    *,
    actor: AbstractBaseUser,
    desktop: Desktop,
    left: str | None,
    new: str,
    action: str,
    source_ip: str | None,
) -> None:
    if left is None:
        desktop.refresh_from_db(fields=["status"])
        raise InvalidTransition(_refusal(desktop, new))
    audit_record(
        action=action, actor=actor, desktop=desktop, source_ip=source_ip, old=left, new=new
    )
    push_desktop_changed(desktop_id=desktop.pk)


def _refusal(desktop: Desktop, wanted: str) -> str:
    return f"The desktop is {desktop.status}; it cannot be {VERBS.get(wanted, wanted)} now."
