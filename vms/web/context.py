"""Template context shared by every page."""

from __future__ import annotations

from functools import cache
from uuid import UUID

from django.db.models import TextChoices
from django.http import HttpRequest
from django.urls import reverse

from vms.models import BackupStatus, DesktopStatus, RestoreStatus, RestoreTarget, SnapshotStatus
from vms.roles import is_admin, is_helpdesk
from vms.services.disks.backups import RESTORING, UNDER_WAY
from vms.services.disks.snapshot_work import PENDING_ACTION


def roles(request: HttpRequest) -> dict[str, bool]:
    """Which role-specific links the navigation shows (the same rules as everywhere)."""
    return {"is_helpdesk_user": is_helpdesk(request.user), "is_admin_user": is_admin(request.user)}


# The URLs the pages' scripts call, as {placeholder} templates: (URL name, its parameters).
SCRIPT_URLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "snapshots": ("api-snapshots", ("desktop_id",)),
    "snapshot": ("api-snapshot", ("desktop_id", "snapshot_id")),
    "snapshot_revert": ("api-snapshot-revert", ("desktop_id", "snapshot_id")),
    "backups": ("api-backups", ("desktop_id",)),
    "backup_restore": ("api-backup-restore", ("backup_id",)),
    "backup_cancel": ("api-backup-cancel", ("backup_id",)),
    "restores": ("api-restores", ("desktop_id",)),
    "restore_cancel": ("api-restore-cancel", ("restore_id",)),
    "desktop_metrics": ("desktop-metrics", ("pk",)),
    "host_metrics": ("host-metrics", ("name",)),
}


def url_template(name: str, params: tuple[str, ...]) -> str:
    """The URL `name` with `{param}` where each parameter goes. Reversed with a stand-in
    that every route converter accepts (a UUID), then the stand-in is swapped back."""
    stand_ins = {param: str(UUID(int=number + 1)) for number, param in enumerate(params)}
    url = reverse(name, kwargs=stand_ins)
    for param, stand_in in stand_ins.items():
        url = url.replace(stand_in, f"{{{param}}}")
    return url


def _choices(choices: type[TextChoices]) -> dict[str, str]:
    return {member.name: member.value for member in choices}


@cache
def script_data() -> dict[str, object]:
    """What the pages' scripts need from the server (templates/vms/_page_data.html): the URLs
    they call, and the names of the states the API and the live feed answer with. The
    scripts keep no copy of either."""
    return {
        "urls": {key: url_template(*route) for key, route in SCRIPT_URLS.items()},
        "states": {
            "desktop": _choices(DesktopStatus),
            "snapshot": _choices(SnapshotStatus),
            "backup": _choices(BackupStatus),
            "restore": _choices(RestoreStatus),
            "restore_target": _choices(RestoreTarget),
        },
        # The states in which each kind's work is under way (the panel polls meanwhile).
        "under_way": {
            "snapshot": sorted(PENDING_ACTION),
            "backup": list(UNDER_WAY),
            "restore": list(RESTORING),
        },
    }


def page_data(request: HttpRequest) -> dict[str, object]:
    return {"page_data": script_data()}
