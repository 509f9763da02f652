"""A launch's steps (the desktop's progress note while it is provisioned and started) and
how the pages show them: each step's label and its place on the launch's progress bar.
The pages get them from the server (the live payload's `launch`), never from a copy."""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict

from vms.models import Desktop, DesktopStatus


class LaunchStep(StrEnum):
    """A launch's progress note, in order (a restore as a new desktop copies its backup
    where a launch clones its template)."""

    QUEUED = "queued"
    CLONING = "cloning"
    RESTORING = "restoring"
    DEFINING = "defining"
    STARTING = "starting"
    READY = "ready"


# Each step's label and its place on the bar (0 to LAUNCH_BAR_END).
LAUNCH_STEPS: dict[str, tuple[str, int]] = {
    LaunchStep.QUEUED: ("Queued", 0),
    LaunchStep.CLONING: ("Cloning disk", 1),
    LaunchStep.RESTORING: ("Restoring from backup", 1),
    LaunchStep.DEFINING: ("Defining", 2),
    LaunchStep.STARTING: ("Starting", 3),
    LaunchStep.READY: ("Console ready", 4),
}
LAUNCH_BAR_END = 4

# The states in which a desktop shows its launch's progress.
LAUNCHING = frozenset({DesktopStatus.PROVISIONING, DesktopStatus.STARTING})


class LaunchProgress(TypedDict):
    label: str
    step: int
    steps: int


def launch_progress(desktop: Desktop) -> LaunchProgress | None:
    """Where the desktop's launch is (its label, its place on the bar of `steps`), or None
    when it is not being launched."""
    if desktop.status not in LAUNCHING:
        return None
    label, step = LAUNCH_STEPS.get(desktop.progress, ("", 0))
    return {"label": label, "step": step, "steps": LAUNCH_BAR_END}
