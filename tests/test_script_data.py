"""The pages' scripts keep no copy of the server's vocabulary: the API's URLs, the states'
names, a launch's steps and labels, the action table's labels all come from the page
(templates/vms/_page_data.html) or the live payload, and every call to the portal goes
through static/js/http.js. A copy creeping back into static/js fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import resolve

from tests.fixtures import make_desktop
from vms.models import DesktopStatus
from vms.services.desktops.actions import ACTIONS
from vms.services.desktops.events import desktop_payload
from vms.services.desktops.progress import LAUNCH_STEPS, LaunchStep
from vms.web.context import SCRIPT_URLS, script_data

SCRIPTS = Path(__file__).resolve().parent.parent / "static" / "js"
SOURCES = {path.name: path.read_text() for path in sorted(SCRIPTS.glob("*.js"))}


def test_no_script_names_an_api_url() -> None:
    assert [name for name, text in SOURCES.items() if "/api/" in text] == []


def test_only_http_js_fetches_or_reads_the_csrf_token() -> None:
    calling = [
        name
        for name, text in SOURCES.items()
        if name != "http.js" and re.search(r"\bfetch\(|csrftoken|X-CSRFToken", text)
    ]
    assert calling == []


def test_no_script_compares_a_state_to_a_spelt_name() -> None:
    # `desktop.status === "running"`, `r.target === "in_place"`, `progress !== "ready"`...
    compared = re.compile(r"""\b(?:status|progress|target)\s*[!=]==?\s*["'`]""")
    found = [
        f"{name}: {m.group(0)}" for name, text in SOURCES.items() for m in compared.finditer(text)
    ]
    assert found == []


def _code(text: str) -> str:
    """A script without its comments (which may quote what pages show)."""
    return re.sub(r"/\*.*?\*/|(?<![:\\])//[^\n]*", "", text, flags=re.S)


def test_no_script_holds_a_launch_step_or_a_label_of_the_server() -> None:
    labels = [label for label, _ in LAUNCH_STEPS.values()]
    labels += [action.busy_label for action in ACTIONS.values() if action.busy_label]
    labels += [status.label for status in DesktopStatus]
    spelt = [rf"""["'`]{re.escape(label)}["'`]""" for label in labels]
    # A list or table of steps: "queued", "cloning", ... or "cloning": ...
    spelt += [rf"""["']{re.escape(step.value)}["']\s*(?:,\s*["']|[:\]])""" for step in LaunchStep]
    found = [
        f"{name}: {match.group(0)}"
        for name, text in SOURCES.items()
        for pattern in spelt
        for match in re.finditer(pattern, _code(text))
    ]
    assert found == []


def test_every_url_a_script_asks_for_is_on_the_page() -> None:
    asked = {m for text in SOURCES.values() for m in re.findall(r"""apiUrl\(["'](\w+)["']""", text)}
    asked |= {"snapshots", "backups", "restores"}  # disks.js maps over these three
    assert asked <= set(SCRIPT_URLS)


def test_the_page_urls_lead_to_their_routes() -> None:
    data = script_data()
    for key, (name, params) in SCRIPT_URLS.items():
        url = data["urls"][key]  # type: ignore[index]
        filled = url
        for param in params:
            assert f"{{{param}}}" in url, (key, url)
            filled = filled.replace(f"{{{param}}}", "00000000-0000-0000-0000-0000000000aa")
        assert resolve(filled).url_name == name


@pytest.mark.django_db
def test_pages_carry_the_script_data(employee, fake_template) -> None:
    make_desktop(owner=employee, template=fake_template, status=DesktopStatus.STOPPED)
    client = Client()
    client.force_login(employee)
    page = client.get("/").content.decode()
    found = re.search(r'<script id="page-data" type="application/json">(.*?)</script>', page)
    assert found is not None
    data = json.loads(found.group(1))
    assert data["states"]["desktop"]["RUNNING"] == DesktopStatus.RUNNING
    assert data["urls"]["snapshots"] == "/api/desktops/{desktop_id}/snapshots/"


@pytest.mark.django_db
def test_the_live_payload_carries_the_launch_step(employee, fake_template) -> None:
    desktop = make_desktop(
        owner=employee,
        template=fake_template,
        status=DesktopStatus.PROVISIONING,
        progress=LaunchStep.RESTORING,
    )
    assert desktop_payload(desktop)["launch"] == {
        "label": "Restoring from backup",
        "step": 1,
        "steps": 4,
    }
    desktop.status = DesktopStatus.RUNNING
    assert desktop_payload(desktop)["launch"] is None
