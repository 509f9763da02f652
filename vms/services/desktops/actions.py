"""The desktop actions: one declarative table that everything else reads.

An action has one name end to end: the service call `desktop_act(action=...)`, the Celery
task that runs its worker function, the API route `POST /api/desktops/{id}/<name>/`, the
page's button and the admin's bulk action. Adding an action is one entry here plus its
worker function: in `vms.services.desktops.lifecycle` (named by its bare name), or a
dotted path into its domain's package (disks, fleet).

The states an action may start from default to every state the transitions table lets
reach its transitional state; an entry may narrow them (never widen: `table_check`
refuses a move the transitions table forbids).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from django.utils.module_loading import import_string

from vms.models import Desktop, DesktopStatus
from vms.roles import DesktopRole as Role
from vms.services.core.errors import InvalidTransition
from vms.services.desktops import transitions

S = DesktopStatus


class ActionName(StrEnum):
    """Every action's name, as the service, task, API route, button and progress note
    spell it (`tests/test_actions.py` checks it names exactly the table's entries)."""

    PROVISION = "provision"
    START = "start"
    STOP = "stop"
    FORCE_STOP = "force-stop"
    REBOOT = "reboot"
    MIGRATE = "migrate"
    RECOVER = "recover"
    DELETE = "delete"
    RESET = "reset"
    SNAPSHOT = "snapshot"
    SNAPSHOT_REVERT = "snapshot-revert"
    SNAPSHOT_DELETE = "snapshot-delete"
    BACKUP = "backup"
    RESTORE = "restore"


A = ActionName


EVERYONE = frozenset(Role)


@dataclass(frozen=True)
class DesktopAction:
    """One desktop action (see the module docstring)."""

    name: ActionName
    label: str
    # The state the desktop moves to at once; None: it keeps its state (e.g. reboot).
    moves_to: str | None
    # Where the worker function leaves it when it is done.
    ends_in: str
    # The worker function in vms.services.desktops.lifecycle that does the libvirt work (or a
    # dotted path to one elsewhere).
    worker: str
    roles: frozenset[Role] = EVERYONE
    # Narrower starting states than the transitions table allows (None: all it allows).
    only_from: frozenset[str] | None = None
    # The desktop already in `moves_to` may ask again (e.g. force-stop during a stop).
    repeatable: bool = False
    # Offered to people (buttons, API routes, admin); False for the worker-side ones.
    offered: bool = True
    # A button on the dashboard and help-desk pages (the API and the admin have them all).
    on_pages: bool = True
    confirm: str = ""
    # Its buttons are red (an action that asks first always is; force-stop too).
    danger: bool = False
    # Offered on the console page as well (while the desktop is not running): start.
    on_console_page: bool = False
    worker_kwargs: dict[str, object] = field(default_factory=dict)
    # The API: POST /api/desktops/{id}/<name>/, or DELETE /api/desktops/{id}/ for "DELETE".
    http_method: str = "POST"
    # When the work fails for good, remove what it made (a half-provisioned desktop).
    undo_on_failure: bool = False
    # A desktop found stuck in this state waits for this action's work (reconcile
    # requeues it); by default the state the action moves to.
    stalls_in: str | None = None
    # An action that keeps the state (moves_to None) but takes a while: while its work
    # runs the desktop's progress note is the action's name, and pages show this label
    # instead of the state (reboot: "Rebooting…"); the worker clears the note when done.
    busy_label: str = ""
    # Parameters a person may give (API body, service keyword) and the function (dotted
    # path) that turns them into fields set with the move, inside its transaction.
    params: tuple[str, ...] = ()
    prepare: str = ""
    # Whose host's queue runs the work: the desktop's `host`, or `migrate_to` (recovery
    # runs on the host that takes the desktop over; its own host is gone).
    queue_of: str = "host"
    # It copies a whole disk (minutes): it goes to the host's long queue
    # (`Host.long_queue_name`), so that it never holds up the host's heartbeat.
    long_running: bool = False
    # A desktop restored from a backup copies it while this runs (provision): then this
    # goes to the long queue too.
    long_when_restored: bool = False
    # While its work runs (its name is the desktop's progress note), every other action
    # on the desktop is refused (409) and no page offers one: an in-place restore, which
    # a start, stop or migration would break (its finished copy thrown away).
    exclusive: bool = False

    def runs_long(self, desktop: Desktop) -> bool:
        """Whether its work on `desktop` goes to the host's long queue."""
        return self.long_running or (
            self.long_when_restored and desktop.restored_from_id is not None
        )

    @property
    def audit_verb(self) -> str:
        return f"desktop.{self.name.replace('-', '_')}"

    @property
    def task_name(self) -> str:
        return f"desktop_{self.name.replace('-', '_')}"

    @property
    def sources(self) -> frozenset[str]:
        """The states the action may start from."""
        if self.only_from is not None:
            chosen = self.only_from
        elif self.moves_to is None:
            chosen = frozenset({self.ends_in})
        else:
            chosen = frozenset(transitions.sources_of(self.moves_to))
        if self.repeatable and self.moves_to is not None:
            chosen |= {self.moves_to}
        return chosen


ACTIONS: dict[str, DesktopAction] = {
    action.name: action
    for action in (
        DesktopAction(
            name=A.PROVISION,
            label="Provision",
            moves_to=None,
            ends_in=S.RUNNING,
            worker="desktop_provision",
            offered=False,
            only_from=frozenset({S.PROVISIONING}),
            stalls_in=S.PROVISIONING,
            undo_on_failure=True,
            long_when_restored=True,
        ),
        DesktopAction(
            name=A.START,
            label="Start",
            moves_to=S.STARTING,
            ends_in=S.RUNNING,
            worker="desktop_boot",
            only_from=frozenset({S.STOPPED, S.ERROR}),
            # A desktop whose host left the fleet starts on another one.
            prepare="vms.services.fleet.membership.desktop_host_for_start",
            on_console_page=True,
        ),
        DesktopAction(
            name=A.STOP,
            label="Stop",
            moves_to=S.STOPPING,
            ends_in=S.STOPPED,
            worker="desktop_power_off",
            only_from=frozenset({S.RUNNING}),
        ),
        DesktopAction(
            name=A.FORCE_STOP,
            label="Force stop",
            moves_to=S.STOPPING,
            ends_in=S.STOPPED,
            worker="desktop_power_off",
            repeatable=True,
            worker_kwargs={"force": True},
            on_pages=False,
            danger=True,
        ),
        DesktopAction(
            name=A.REBOOT,
            label="Reboot",
            moves_to=None,
            ends_in=S.RUNNING,
            worker="desktop_restart",
            busy_label="Rebooting…",
        ),
        DesktopAction(
            name=A.MIGRATE,
            label="Migrate",
            moves_to=S.MIGRATING,
            ends_in=S.RUNNING,
            worker="vms.services.fleet.migration.desktop_migrate",
            roles=frozenset({Role.ADMIN}),
            only_from=frozenset({S.RUNNING}),
            on_pages=False,
            params=("host",),
            prepare="vms.services.fleet.migration.migration_target_choose",
        ),
        DesktopAction(
            name=A.RECOVER,
            label="Recover",
            moves_to=S.RECOVERING,
            ends_in=S.RUNNING,
            worker="vms.services.fleet.recovery.desktop_recover",
            roles=frozenset({Role.ADMIN}),
            offered=False,  # started by the portal when a host is lost (services.recovery)
            only_from=frozenset({S.RUNNING, S.STARTING, S.STOPPING}),
            queue_of="migrate_to",
        ),
        DesktopAction(
            name=A.DELETE,
            label="Delete",
            moves_to=S.DELETING,
            ends_in=S.DELETED,
            worker="desktop_teardown",
            roles=frozenset({Role.OWNER, Role.ADMIN}),
            confirm="Delete {name}? Its disk is removed for good.",
            danger=True,
            http_method="DELETE",
            # A stopped desktop whose host left the fleet is deleted by another host.
            prepare="vms.services.fleet.membership.desktop_host_for_delete",
        ),
        # Snapshots, reset, backups and restores (docs/backups.md): their own routes
        # start them (vms.services.disks.snapshots, .backups), each refused by
        # `disk_work_check` unless the desktop is in one of the action's states with nothing
        # else under way; the desktop keeps its state and shows the busy label while the
        # worker runs.
        DesktopAction(
            name=A.RESET,
            label="Reset",
            moves_to=None,
            ends_in=S.STOPPED,
            worker="vms.services.disks.snapshot_work.desktop_reset",
            roles=frozenset({Role.OWNER, Role.ADMIN}),
            only_from=frozenset({S.RUNNING, S.STOPPED}),
            confirm="Reset {name} to a fresh copy of its template? It is powered off, and "
            "everything on its disk, and its snapshots, are lost.",
            danger=True,
            busy_label="Resetting…",
        ),
        *(
            DesktopAction(
                name=name,
                label=label,
                moves_to=None,
                ends_in=S.RUNNING,
                offered=False,
                worker=f"vms.services.disks.{worker}",
                busy_label=busy,
                only_from=frozenset({S.RUNNING, S.STOPPED}),
                long_running=long_running,
                exclusive=name == A.RESTORE,
            )
            for name, label, worker, busy, long_running in (
                (
                    A.SNAPSHOT,
                    "Snapshot",
                    "snapshot_work.desktop_snapshot_take",
                    "Taking a snapshot…",
                    False,
                ),
                (
                    A.SNAPSHOT_REVERT,
                    "Revert",
                    "snapshot_work.desktop_snapshot_revert",
                    "Reverting…",
                    False,
                ),
                (
                    A.SNAPSHOT_DELETE,
                    "Delete snapshot",
                    "snapshot_work.desktop_snapshot_remove",
                    "Deleting a snapshot…",
                    False,
                ),
                (A.BACKUP, "Back up", "backup_work.desktop_backup", "", True),
                (A.RESTORE, "Restore", "backup_work.desktop_restore", "Restoring…", True),
            )
        ),
    )
}


def action_worker(action: DesktopAction) -> Callable[..., None]:
    """The action's worker function: a dotted path, or a name in vms.services.desktops.lifecycle."""
    path = (
        action.worker
        if "." in action.worker
        else f"vms.services.desktops.lifecycle.{action.worker}"
    )
    worker: Callable[..., None] = import_string(path)
    return worker


def action_get(name: str) -> DesktopAction | None:
    return ACTIONS.get(name)


def actions_offered() -> list[DesktopAction]:
    """The actions people may ask for, in the table's order."""
    return [action for action in ACTIONS.values() if action.offered]


def actions_for(*, role: Role, on_pages: bool = False) -> list[DesktopAction]:
    """The offered actions `role` may run (only those with page buttons if asked)."""
    return [
        action
        for action in actions_offered()
        if role in action.roles and (action.on_pages or not on_pages)
    ]


def actions_valid_in(status: str, *, progress: str = "") -> list[str]:
    """Names of the offered actions a desktop in `status` allows (for the live pages);
    an action already under way (its name is the progress note) is not offered again,
    and none is while an exclusive one (a restore) runs."""
    if exclusive_under_way(progress) is not None:
        return []
    return [
        action.name
        for action in actions_offered()
        if status in action.sources and not (action.busy_label and action.name == progress)
    ]


def busy_label_of(progress: str) -> str:
    """The label pages show for a desktop whose progress note names a busy action
    (e.g. "Rebooting…"), or "" when no such action is under way."""
    action = ACTIONS.get(progress)
    return action.busy_label if action is not None else ""


def exclusive_under_way(progress: str) -> DesktopAction | None:
    """The exclusive action (a restore) whose work runs on a desktop with this progress
    note, or None: while it runs, `desktop_act` refuses every other action."""
    action = ACTIONS.get(progress)
    return action if action is not None and action.exclusive else None


def state_said(desktop: Desktop) -> str:
    """How a refusal names the desktop's state: the busy action's label while one runs
    ("restoring"), otherwise its state ("stopped")."""
    return (busy_label_of(desktop.progress).rstrip("…") or desktop.get_status_display()).lower()


def disk_work_check(desktop: Desktop, *, action: ActionName, what: str, refusal: str = "") -> None:
    """The one guard of the disk actions (snapshots, backups, restores): refuse the work
    (InvalidTransition, saying `what` is refused, or `refusal` as given) unless `desktop`
    is in one of the action's starting states and no busy action runs on it."""
    if desktop.status in ACTIONS[action].sources and not busy_label_of(desktop.progress):
        return
    raise InvalidTransition(
        refusal
        or f"The desktop is {state_said(desktop)}; {what} is possible when it is running or "
        "stopped and nothing else is under way."
    )


def action_resuming(status: str) -> DesktopAction | None:
    """The action whose work a desktop stuck in `status` waits for (reconcile requeues
    it); the first in the table when several share the state."""
    for action in ACTIONS.values():
        if (action.stalls_in or action.moves_to) == status:
            return action
    return None


def table_check(actions: Iterable[DesktopAction] = ACTIONS.values()) -> list[str]:
    """What is wrong with the table: immediate moves the transitions table forbids, an
    action that asks first but is not shown as dangerous."""
    problems = []
    for action in actions:
        if action.confirm and not action.danger:
            problems.append(f"{action.name}: it asks first, so it is dangerous")
        if action.moves_to is None:
            continue
        for source in action.sources - {action.moves_to}:
            if not transitions.can_move(old=source, new=action.moves_to):
                problems.append(f"{action.name}: {source} -> {action.moves_to} is not allowed")
    return problems
