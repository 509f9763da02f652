"""Live updates: tell open pages (over Channels) that a desktop changed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from redis.exceptions import RedisError

from vms.models import Desktop
from vms.selectors import console_watchers, desktop_status_label
from vms.services.desktops.actions import actions_valid_in
from vms.services.desktops.progress import launch_progress

log = logging.getLogger(__name__)


def desktop_group(desktop_id: UUID | str) -> str:
    """Channels group of everyone watching one desktop."""
    return f"desktop.{desktop_id}"


def user_group(user_id: int) -> str:
    """Channels group of one user's open pages."""
    return f"user.{user_id}"


def desktop_payload(desktop: Desktop) -> dict[str, object]:
    """What a page needs to redraw one desktop (no secrets)."""
    return {
        "id": str(desktop.pk),
        "name": desktop.name,
        "status": desktop.status,
        "status_label": desktop_status_label(desktop),
        # Offered actions the new state allows; a page shows those of its buttons.
        "actions": actions_valid_in(desktop.status, progress=desktop.progress),
        "progress": desktop.progress,
        # While it is launched: its step's label and place on the progress bar.
        "launch": launch_progress(desktop),
        "last_error": desktop.last_error,
        # What it holds against the quota: the owner's dashboard refreshes its meters
        # and Launch buttons when these or the state change.
        "size": [desktop.vcpus, desktop.memory_mib, desktop.disk_gib],
        # Its networks' addresses as the pages show them ("desktops 10.80.0.2").
        "addresses": addresses_label(desktop),
    }


def addresses_label(desktop: Desktop) -> str:
    """The text of templates/vms/_addresses.html, for the live push."""
    return " · ".join(
        f"{nic.network.name} {', '.join(nic.addresses) or '(no address yet)'}"
        for nic in desktop.interfaces.select_related("network")
    )


def push_desktop_changed(*, desktop_id: UUID | str) -> None:
    """After commit, send the desktop's fresh state to its watchers."""
    transaction.on_commit(partial(_push, desktop_id))


def _push(desktop_id: UUID | str) -> None:
    desktop = Desktop.objects.filter(pk=desktop_id).first()
    if desktop is None:
        return
    message = {"type": "desktop.changed", "desktop": desktop_payload(desktop)}
    groups = (desktop_group(desktop.pk), user_group(desktop.owner_id))
    group_send_best_effort(groups, message, what=f"the state of desktop {desktop_id}")


def group_send_best_effort(groups: Iterable[str], message: dict[str, Any], *, what: str) -> None:
    """Send `message` to each Channels group. Best effort: pages also show state on reload,
    and relays re-check their sessions on their own, so a Redis outage is only logged."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except (RedisError, OSError):
        log.warning("could not push %s", what)


def push_console_sessions(*, desktop_id: UUID | str) -> None:
    """After commit, tell the owner's pages who else is on the desktop's console now."""
    transaction.on_commit(partial(_push_watchers, desktop_id))


def _push_watchers(desktop_id: UUID | str) -> None:
    owner_id = Desktop.objects.filter(pk=desktop_id).values_list("owner_id", flat=True).first()
    if owner_id is None:
        return
    message = {
        "type": "console.watchers",
        "desktop_id": str(desktop_id),
        "watchers": console_watchers(desktop_ids=[desktop_id])[str(desktop_id)],
    }
    groups = (desktop_group(desktop_id), user_group(owner_id))
    group_send_best_effort(groups, message, what=f"the console watchers of desktop {desktop_id}")


def push_owner_notice(*, desktop_id: UUID | str, text: str) -> None:
    """After commit, show the desktop's owner a notice on their open pages (e.g. a
    help-desk revert of their desktop, with its reason)."""
    transaction.on_commit(partial(_push_notice, desktop_id, text))


def _push_notice(desktop_id: UUID | str, text: str) -> None:
    owner_id = Desktop.objects.filter(pk=desktop_id).values_list("owner_id", flat=True).first()
    if owner_id is None:
        return
    message = {"type": "desktop.notice", "desktop_id": str(desktop_id), "text": text}
    group_send_best_effort([user_group(owner_id)], message, what=f"a notice on {desktop_id}")
