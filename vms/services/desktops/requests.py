"""User-facing desktop writes: launch (`desktop_create`) and every action of the table in
`vms.services.desktops.actions` (`desktop_act`).

Each checks the state table, writes the new state by compare-and-set, records an audit
event and queues the worker task on commit. The libvirt work happens in the actions'
worker functions (`vms.services.desktops.lifecycle` and the other domains'), run by the
Celery tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.module_loading import import_string

from vms.hypervisor.naming import domain_name, volume_name
from vms.models import Desktop, DesktopStatus, Template
from vms.roles import DesktopRole, desktop_role
from vms.selectors import templates_for_user
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import InvalidName, InvalidTransition, NotAssigned, ServiceError
from vms.services.core.queue import broker_check, enqueue_desktop_task
from vms.services.desktops import transitions
from vms.services.desktops.actions import (
    ACTIONS,
    ActionName,
    DesktopAction,
    action_get,
    exclusive_under_way,
)
from vms.services.desktops.events import push_desktop_changed
from vms.services.desktops.progress import LaunchStep
from vms.services.desktops.quotas import NOT_COUNTED, quota_check, quota_check_back
from vms.services.fleet.placement import host_choose
from vms.services.networks.desktop_networks import interfaces_allocate
from vms.settings_access import name_prefix

NAME_MAX = 100


def desktop_create(
    *, user: User, template_id: int, name: str = "", source_ip: str | None = None
) -> Desktop:
    """Launch a new desktop of a template assigned to `user`.

    The quota check and the insert share one transaction under a lock on the user's row,
    so concurrent launches by one user cannot overshoot the quota.
    """
    name = desktop_name_clean(name)
    broker_check()
    with transaction.atomic():
        desktop = desktop_launch_insert(user=user, template_id=template_id, name=name)
        audit_record(
            action=AuditVerb.DESKTOP_CREATE,
            actor=user,
            desktop=desktop,
            source_ip=source_ip,
            template=desktop.template.name,
        )
        push_desktop_changed(desktop_id=desktop.pk)
        enqueue_desktop_task(ACTIONS[ActionName.PROVISION], desktop=desktop)
    return desktop


def desktop_launch_insert(*, user: User, template_id: int, name: str) -> Desktop:
    """A launch's checks and its new row, for `user` (the desktop's owner): the template
    must be enabled and assigned to them (NotAssigned), and one more desktop must fit
    their quota, checked under a lock on their row (QuotaExceeded). Every way a desktop
    comes to be goes through here: a launch, and a restore as a new desktop (so a revoked
    or disabled template does not come back). Call it inside the caller's transaction."""
    template = templates_for_user(user=user).filter(pk=template_id).first()
    if template is None:
        raise NotAssigned("This template is not available to you.")
    get_user_model().objects.select_for_update().get(pk=user.pk)
    quota_check(user=user, template=template)
    return _insert(user=user, template=template, name=name)


def _insert(*, user: User, template: Template, name: str) -> Desktop:
    host = host_choose(template=template)
    desktop = Desktop(
        owner=user,
        template=template,
        host=host,
        vcpus=template.vcpus,
        memory_mib=template.memory_mib,
        disk_gib=template.disk_gib,
        base_image_path=template.base_image_path,
        name=name or template.name[:NAME_MAX],
        progress=LaunchStep.QUEUED,
    )
    desktop.domain_name = domain_name(name_prefix(), str(desktop.pk))
    desktop.volume_name = volume_name(name_prefix(), str(desktop.pk))
    desktop.save(force_insert=True)
    interfaces_allocate(desktop=desktop)
    return desktop


def desktop_name_clean(name: str) -> str:
    """`name` as it is stored: trimmed; InvalidName when it is too long or holds control
    characters (tabs, line breaks, invisible formatting marks). May be empty."""
    cleaned = name.strip()
    if len(cleaned) > NAME_MAX:
        raise InvalidName(f"The name is too long: at most {NAME_MAX} characters.")
    if any(not char.isprintable() for char in cleaned):
        raise InvalidName("The name may not contain control characters such as line breaks.")
    return cleaned


# Who may rename a desktop: the people who may also delete it.
RENAMERS = frozenset({DesktopRole.OWNER, DesktopRole.ADMIN})


def desktop_rename(
    *, actor: User, desktop: Desktop, name: str, source_ip: str | None = None
) -> Desktop:
    """Give `desktop` (which `actor` can already see) a new name, with an audit row."""
    if desktop_role(actor, owner_id=desktop.owner_id) not in RENAMERS:
        raise PermissionDenied("You may not rename this desktop.")
    new = desktop_name_clean(name)
    if not new:
        raise InvalidName("Give the desktop a name.")
    with transaction.atomic():
        row = Desktop.objects.select_for_update().get(pk=desktop.pk)
        if row.status in (DesktopStatus.DELETING, DesktopStatus.DELETED):
            raise InvalidTransition("The desktop is being deleted; it cannot be renamed.")
        Desktop.objects.filter(pk=row.pk).update(name=new)
        audit_record(
            action=AuditVerb.DESKTOP_RENAME,
            actor=actor,
            desktop=row,
            source_ip=source_ip,
            old=row.name,
            new=new,
        )
        push_desktop_changed(desktop_id=row.pk)
    desktop.name = new
    return desktop


def desktop_act(
    *,
    actor: User,
    desktop: Desktop,
    action: str,
    source_ip: str | None = None,
    params: Mapping[str, str] | None = None,
) -> None:
    """Run one action of the table on `desktop` for `actor` (who can already see it).

    Moves the desktop by compare-and-set from one of the action's starting states, records
    the audit event and queues the action's work on commit; 409 (InvalidTransition) when
    the desktop's state does not allow it, 403 when the actor's role does not.
    """
    entry = action_get(action)
    if entry is None or not entry.offered:
        raise ServiceError(f"There is no desktop action '{action}'.")
    if desktop_role(actor, owner_id=desktop.owner_id) not in entry.roles:
        raise PermissionDenied(f"You may not {entry.label.lower()} this desktop.")
    given = _params_of(entry, params or {})
    broker_check()
    with transaction.atomic():
        _quota_check_back(desktop=desktop, entry=entry)
        _exclusive_check(desktop=desktop, entry=entry)
        fields = import_string(entry.prepare)(desktop=desktop, **given) if entry.prepare else {}
        left = _move(desktop=desktop, entry=entry, fields=fields)
        if left is None:
            desktop.refresh_from_db(fields=["status"])
            raise InvalidTransition(_refusal(desktop, entry))
        for name, value in fields.items():  # e.g. a new host: its queue gets the work
            setattr(desktop, name, value)
        detail = {"old": left, "new": entry.moves_to} if entry.moves_to else {}
        detail |= {name: str(value) for name, value in fields.items()}
        audit_record(
            action=AuditVerb(entry.audit_verb),
            actor=actor,
            desktop=desktop,
            source_ip=source_ip,
            **detail,
        )
        if entry.busy_label:
            # Pages show the busy label until the worker clears the note.
            Desktop.objects.filter(pk=desktop.pk).update(progress=entry.name)
        if entry.moves_to or entry.busy_label:
            push_desktop_changed(desktop_id=desktop.pk)
        enqueue_desktop_task(entry, desktop=desktop)


def _quota_check_back(*, desktop: Desktop, entry: DesktopAction) -> None:
    """A desktop in a state the quota does not count (`error`) that an action would bring
    back (Start: anything but Delete) passes the launch's check again, under the owner's
    row lock (taken before the desktop's, in the order launches and backups take them)."""
    if entry.moves_to in (None, DesktopStatus.DELETING):
        return
    current = Desktop.objects.filter(pk=desktop.pk).values_list("status", flat=True).first()
    if current not in NOT_COUNTED:
        return
    get_user_model().objects.select_for_update().get(pk=desktop.owner_id)
    row = Desktop.objects.select_for_update().select_related("owner").get(pk=desktop.pk)
    if row.status in NOT_COUNTED:
        quota_check_back(desktop=row)


def _exclusive_check(*, desktop: Desktop, entry: DesktopAction) -> None:
    """The table's shared precondition: refuse every action while an exclusive one (an
    in-place restore) runs on the desktop. The row stays locked to the end of the
    caller's transaction, so a restore cannot begin between this check and the move."""
    row = Desktop.objects.select_for_update().filter(pk=desktop.pk)
    holder = exclusive_under_way(row.values_list("progress", flat=True).first() or "")
    if holder is not None and holder.name != entry.name:
        raise InvalidTransition(
            f"A {holder.label.lower()} of this desktop is under way; "
            f"{entry.label.lower()} is possible when it is over (or cancel it first)."
        )


def _params_of(entry: DesktopAction, params: Mapping[str, str]) -> dict[str, str]:
    """The parameters given, when the action takes them (a clear refusal otherwise)."""
    unknown = sorted(set(params) - set(entry.params))
    if unknown:
        raise ServiceError(f"{entry.label} takes no '{unknown[0]}'.")
    return {name: str(value).strip() for name, value in params.items()}


def _move(*, desktop: Desktop, entry: DesktopAction, fields: dict[str, Any]) -> str | None:
    """Leave one of the action's starting states; the state left, or None."""
    if entry.moves_to is None or (entry.repeatable and _is_in(desktop, entry.moves_to)):
        # No move (reboot), or asked again while already moving (force during a stop).
        current = _status_if_in(desktop, entry.sources)
        return current
    return transitions.move_from_any(
        desktop_id=desktop.pk,
        allowed_from=sorted(entry.sources),
        new=entry.moves_to,
        progress="",
        last_error="",
        **fields,
    )


def _is_in(desktop: Desktop, status: str) -> bool:
    return Desktop.objects.filter(pk=desktop.pk, status=status).exists()


def _status_if_in(desktop: Desktop, states: frozenset[str]) -> str | None:
    row = Desktop.objects.select_for_update().filter(pk=desktop.pk, status__in=states)
    return row.values_list("status", flat=True).first()


def _refusal(desktop: Desktop, entry: DesktopAction) -> str:
    return (
        f"The desktop is {desktop.get_status_display().lower()}; "
        f"{entry.label.lower()} is not possible now."
    )
