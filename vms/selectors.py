"""Reads: which templates and desktops a user may see. Pages and the API use these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group, User
from django.db.models import CharField, Exists, F, OuterRef, Q, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from vms.models import (
    AuditEvent,
    ConsoleSession,
    Desktop,
    DesktopStatus,
    Snapshot,
    SnapshotStatus,
    Template,
)
from vms.roles import HELPDESK_GROUP, desktop_role, is_admin, sees_all_desktops
from vms.services.desktops.actions import actions_for, actions_valid_in, busy_label_of


def templates_for_user(*, user: User | AnonymousUser) -> QuerySet[Template]:
    """Enabled templates assigned to the user directly or through one of their groups."""
    if not user.is_authenticated:
        return Template.objects.none()
    assigned = Q(assigned_users=user) | Q(assigned_groups__user=user)
    return Template.objects.filter(assigned, enabled=True).distinct()


def desktops_visible_to(
    *, user: User | AnonymousUser, owner_username: str | None = None
) -> QuerySet[Desktop]:
    """Desktops the user may see: their own; help-desk and admins see everyone's.

    Deleted desktops are hidden. `owner_username` narrows the list for help-desk and admins;
    for anyone else it can only narrow their own list.
    """
    if not user.is_authenticated:
        return Desktop.objects.none()
    desktops = Desktop.objects.exclude(status=DesktopStatus.DELETED).select_related(
        "template", "host", "owner"
    )
    if not sees_all_desktops(user):
        desktops = desktops.filter(owner=user)
    if owner_username:
        desktops = desktops.filter(owner__username=owner_username)
    return desktops


def users_matching(
    *,
    query: str,
    limit: int = 20,
    employees_only: bool = False,
    with_desktops_only: bool = False,
) -> QuerySet[User]:
    """Active users whose username or name contains `query` (help-desk search).

    `employees_only` leaves out help-desk staff and admins; `with_desktops_only` leaves out
    users without a live (not deleted) desktop. Both narrow the one query.
    """
    term = query.strip()
    users = get_user_model().objects.filter(is_active=True)
    if term:
        users = users.filter(
            Q(username__icontains=term)
            | Q(first_name__icontains=term)
            | Q(last_name__icontains=term)
        )
    if employees_only:
        staff = Q(is_staff=True) | Q(is_superuser=True)
        helpdesk = Exists(Group.objects.filter(user=OuterRef("pk"), name=HELPDESK_GROUP))
        users = users.exclude(staff).exclude(helpdesk)
    if with_desktops_only:
        live = Desktop.objects.filter(owner=OuterRef("pk")).exclude(status=DesktopStatus.DELETED)
        users = users.filter(Exists(live))
    return users.order_by("username")[:limit]


# A SPICE client file is a console session for as long as its password works, and, once
# remote-viewer connected through the SPICE proxy (audit SPICE_SET_OPEN_ACTION), for as long
# as that connection set lives (the proxy closes the session when it ends).
SPICE_FILE_RELAY = "spice-file"
SPICE_FILE_VALID_S = 60
SPICE_SET_OPEN_ACTION = "console.spice_connect"


def spice_set_opened() -> Exists:
    """Whether a session's SPICE file opened a connection set at the proxy (per row)."""
    return Exists(
        AuditEvent.objects.filter(action=SPICE_SET_OPEN_ACTION, desktop_id=OuterRef("desktop_id"))
        .annotate(spice_set=KT("detail__spice_set"))
        .filter(spice_set=Cast(OuterRef("pk"), output_field=CharField()))
    )


def console_sessions_open() -> QuerySet[ConsoleSession]:
    """Sessions open now: not ended, and not a SPICE file whose password has expired
    unused (reconcile records its end later)."""
    expired_file = Q(
        relay=SPICE_FILE_RELAY,
        started_at__lte=timezone.now() - timedelta(seconds=SPICE_FILE_VALID_S),
    )
    return (
        ConsoleSession.objects.filter(ended_at__isnull=True)
        .annotate(spice_set_opened=spice_set_opened())
        .exclude(expired_file & Q(spice_set_opened=False))
    )


def console_watchers(*, desktop_ids: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Open console sessions by people other than the owner, per desktop (one query).

    Each entry says who, the mode, the reason given for taking control, since when (ISO
    8601, for the page to show in local time) and the session's id (for the owner's End
    button). A SPICE file's entry says so (`spice_client`); an unused one also says until
    when its password works, so pages can drop it then; one connected through the SPICE
    proxy stays until its set ends.
    """
    sessions = (
        console_sessions_open()
        .filter(desktop_id__in=desktop_ids)
        .exclude(user_id=F("desktop__owner_id"))
        .values_list(
            "pk",
            "desktop_id",
            "user__username",
            "mode",
            "reason",
            "relay",
            "started_at",
            "spice_set_opened",  # type: ignore[misc]  # an annotation, which the plugin cannot see
        )
        .order_by("started_at")
    )
    watchers: dict[str, list[dict[str, Any]]] = {str(pk): [] for pk in desktop_ids}
    for session_id, desktop_id, username, mode, reason, relay, started_at, opened in sessions:
        entry: dict[str, Any] = {
            "session": session_id,
            "user": username,
            "mode": mode,
            "reason": reason,
            "since": started_at.isoformat(),
        }
        if relay == SPICE_FILE_RELAY:
            entry["spice_client"] = True
        if relay == SPICE_FILE_RELAY and not opened:
            until = started_at + timedelta(seconds=SPICE_FILE_VALID_S)
            entry["until"] = until.isoformat()
        watchers[str(desktop_id)].append(entry)
    return watchers


def console_sessions_endable_by(*, user: User | AnonymousUser) -> QuerySet[ConsoleSession]:
    """Other people's console sessions on desktops `user` may end: their own desktops, or
    any desktop for an admin (the owner's End button)."""
    if not user.is_authenticated:
        return ConsoleSession.objects.none()
    sessions = ConsoleSession.objects.exclude(user_id=F("desktop__owner_id")).select_related(
        "desktop", "user"
    )
    return sessions if is_admin(user) else sessions.filter(desktop__owner=user)


def helpdesk_search(
    *,
    query: str,
    limit: int = 20,
    employees_only: bool = False,
    with_desktops_only: bool = False,
) -> list[tuple[Any, list[Desktop]]]:
    """Users matching `query` (narrowed as `users_matching` says), each with their live
    desktops and their interfaces: three queries in all, however many users and desktops
    match."""
    users = list(
        users_matching(
            query=query,
            limit=limit,
            employees_only=employees_only,
            with_desktops_only=with_desktops_only,
        )
    )
    desktops = (
        Desktop.objects.exclude(status=DesktopStatus.DELETED)
        .filter(owner__in=users)
        .select_related("template", "host")
        .prefetch_related("interfaces__network")
        .order_by("created_at")
    )
    by_owner: dict[int, list[Desktop]] = {user.pk: [] for user in users}
    for desktop in desktops:
        by_owner[desktop.owner_id].append(desktop)
    return [(user, by_owner[user.pk]) for user in users]


@dataclass(frozen=True)
class ActionButton:
    """One action button on a page: hidden while the desktop's state does not allow it
    (the live push shows and hides it as the state changes)."""

    name: str
    label: str
    confirm: str
    danger: bool
    valid_now: bool


def action_buttons(*, user: User | AnonymousUser, desktop: Desktop) -> list[ActionButton]:
    """The page buttons of the actions `user` may run on `desktop` (from the table)."""
    valid = set(actions_valid_in(desktop.status, progress=desktop.progress))
    role = desktop_role(user, owner_id=desktop.owner_id)
    return [
        ActionButton(
            name=action.name,
            label=action.label,
            confirm=action.confirm.format(name=desktop.name),
            danger=action.danger,
            valid_now=action.name in valid,
        )
        for action in actions_for(role=role, on_pages=True)
    ]


def desktop_status_label(desktop: Desktop) -> str:
    """What pages show as the desktop's state: a busy action's label while one is under
    way ("Rebooting…"), otherwise the state's own label."""
    return busy_label_of(desktop.progress) or desktop.get_status_display()


def snapshots_revertable(*, desktop_ids: list[Any]) -> dict[Any, list[Snapshot]]:
    """Per desktop, the snapshots it may be reverted to (help-desk page), newest first;
    one query for all of them."""
    found: dict[Any, list[Snapshot]] = {pk: [] for pk in desktop_ids}
    ready = Snapshot.objects.filter(desktop_id__in=desktop_ids, status=SnapshotStatus.READY)
    for snapshot in ready.order_by("-created_at"):
        found[snapshot.desktop_id].append(snapshot)
    return found
