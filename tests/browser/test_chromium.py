"""The suite's Chromium does not raise its own priority (tests/browser/chromium says why)."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Browser


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (read from /proc: their parent pids)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended while we looked
        parents[int(stat.parent.name)] = int(fields[1])
    found = {pid}
    while more := {child for child, parent in parents.items() if parent in found} - found:
        found |= more
    return found - {pid}


def thread_nice_values(pid: int) -> dict[str, int]:
    """Each thread's name and nice value (field 19 of its stat)."""
    values = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            name, rest = stat.read_text().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, ValueError):
            continue
        values[f"{pid}/{stat.parent.name} {name}"] = int(rest.split()[16])
    return values


def test_chromium_threads_keep_their_inherited_priority(browser: Browser) -> None:
    page = browser.new_page()
    page.set_content("<canvas></canvas><p>compositing</p>")
    page.locator("p").click()  # the browser, its compositor and a renderer are all busy
    threads: dict[str, int] = {}
    for pid in descendants(os.getpid()):
        threads |= thread_nice_values(pid)
    page.close()
    chromium = {name: nice for name, nice in threads.items() if "chrom" in name.lower()}
    assert chromium, threads  # Chromium's processes were found
    raised = {name: nice for name, nice in threads.items() if nice < 0}
    assert raised == {}, raised
