"""The action table (vms.services.desktops.actions) drives everything: each action works end to end
on libvirt's test driver, and an action, state or label missing anywhere fails here."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from django.contrib import admin
from django.test import Client, RequestFactory
from django.urls import reverse

from tests.fixtures import make_desktop
from vms import tasks
from vms.models import AuditEvent, Desktop, DesktopStatus, Host
from vms.roles import DesktopRole
from vms.services.desktops import transitions
from vms.services.desktops.actions import (
    ACTIONS,
    ActionName,
    DesktopAction,
    action_resuming,
    action_worker,
    actions_offered,
    actions_valid_in,
    table_check,
)
from vms.services.desktops.requests import desktop_act, desktop_create

pytestmark = pytest.mark.django_db

TEST_POOL = "default-pool"


def test_the_table_agrees_with_the_transitions_table() -> None:
    assert table_check() == []
    from_deleted = dataclasses.replace(ACTIONS["start"], only_from=frozenset({"deleted"}))
    assert table_check([from_deleted]) == ["start: deleted -> starting is not allowed"]


def test_the_names_are_an_enumeration_of_the_table() -> None:
    assert set(ACTIONS) == set(ActionName)
    for name, action in ACTIONS.items():
        assert isinstance(action.name, ActionName) and name == action.name
    reset_undangerous = dataclasses.replace(ACTIONS["reset"], danger=False)
    assert table_check([reset_undangerous]) == ["reset: it asks first, so it is dangerous"]


# Where an action's name would be spelt by hand: ACTIONS["x"], action="x", step="x",
# progress="x", `entry.name == "x"`, {"x"}. The code says ActionName.X instead.
NAMED_BY = {"action", "step", "progress", "name"}


def _naming(node: ast.AST) -> bool:
    """An expression that holds an action's name: `action`, `entry.name`, `row.progress`."""
    if isinstance(node, ast.Attribute):
        return node.attr in NAMED_BY
    return isinstance(node, ast.Name) and node.id in NAMED_BY


def _hand_spelt(tree: ast.AST) -> Iterator[tuple[int, str]]:
    names = {name.value for name in ActionName}

    def spelt(node: ast.AST | None) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and spelt(node.slice):
            found = isinstance(node.value, ast.Name) and node.value.id == "ACTIONS"
        elif isinstance(node, ast.keyword):
            found = node.arg in NAMED_BY - {"name"} and spelt(node.value)
        elif isinstance(node, ast.Compare):
            sides = (node.left, *node.comparators)
            found = any(spelt(side) for side in sides) and any(_naming(side) for side in sides)
        elif isinstance(node, ast.Set):
            found = any(spelt(element) for element in node.elts)
        else:
            continue
        if found:
            yield getattr(node, "lineno", 0), ast.unparse(node)


def test_no_module_spells_an_action_name_by_hand() -> None:
    root = Path(__file__).resolve().parent.parent
    table = root / "vms/services/desktops/actions.py"
    found = [
        f"{path.relative_to(root)}:{line}: {text}"
        for path in sorted((root / "vms").rglob("*.py"))
        if path != table and "migrations" not in path.parts
        for line, text in _hand_spelt(ast.parse(path.read_text()))
    ]
    assert found == []


def test_no_template_spells_an_action_name_by_hand() -> None:
    root = Path(__file__).resolve().parent.parent
    names = "|".join(re.escape(name.value) for name in ActionName)
    compared = re.compile(rf"""==\s*["'](?:{names})["']|["'](?:{names})["']\s*==""")
    found = [
        f"{path.relative_to(root)}: {match.group(0)}"
        for path in sorted((root / "templates").rglob("*.html"))
        for match in compared.finditer(path.read_text())
    ]
    assert found == []


def test_every_state_has_a_label_and_every_transitional_state_a_resuming_action() -> None:
    for status in DesktopStatus:
        assert status.label and status.label != status.value, status
        assert status in transitions.TRANSITIONS, status
    for action in ACTIONS.values():
        stuck_in = action.stalls_in or action.moves_to
        if stuck_in:
            assert action_resuming(stuck_in) is not None, stuck_in


@pytest.mark.parametrize("action", actions_offered(), ids=lambda a: a.name)
def test_every_offered_action_is_reachable_everywhere(
    action: DesktopAction, admin_user_, employee, fake_template, django_capture_on_commit_callbacks
) -> None:
    assert action.label and action.audit_verb.startswith("desktop.")
    assert callable(action_worker(action))
    assert tasks.DESKTOP_TASKS[action.name].name == f"vms.tasks.{action.task_name}"
    schema = _schema()
    if action.http_method == "POST":
        assert "post" in schema["paths"][f"/api/desktops/{{id}}/{action.name}/"]
    else:
        assert action.http_method.lower() in schema["paths"]["/api/desktops/{id}/"]
    assert f"bulk_{action.name.replace('-', '_')}" in _admin_actions(admin_user_)

    # The page route takes it, and a page offers it as a button in a state that allows it.
    desktop = make_desktop(employee, fake_template, status=sorted(action.sources)[0])
    page = Client()
    page.force_login(admin_user_)
    if action.on_pages:
        helpdesk_page = page.get("/helpdesk/", {"q": employee.username}).content.decode()
        assert f'data-action="{action.name}"' in helpdesk_page
    with django_capture_on_commit_callbacks(execute=False):
        answer = page.post(
            reverse("desktop-action", kwargs={"pk": desktop.pk, "action": action.name})
        )
    assert answer.status_code == 302
    assert AuditEvent.objects.filter(desktop=desktop, action=action.audit_verb).exists()


@pytest.fixture(autouse=True)
def migratable_hosts(fake_host: Host) -> None:
    """A second host on the test driver, and network addresses for both, so "migrate" has
    somewhere to go. The test driver talks to no network: these addresses (in the lab
    hosts' range) are never contacted."""
    Host.objects.filter(pk=fake_host.pk).update(console_address="10.213.250.2")
    Host.objects.create(
        name="fake2",
        uri="test:///default",
        storage_pool="default-pool",
        console_address="10.213.251.2",
        last_check_ok=True,
    )
    Host.objects.filter(pk=fake_host.pk).update(last_check_ok=True)


@pytest.fixture
def test_driver() -> Iterator[libvirt.virConnect]:
    """Holds libvirt's test driver open, so the state made in this test lives on."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
def provisioned(
    test_driver, fake_template, employee, django_capture_on_commit_callbacks
) -> Desktop:
    """A desktop launched through the service and provisioned by its worker on the test
    driver (the task body runs here, in-process, instead of on a worker)."""
    _base_volume(test_driver, fake_template.base_image_path)
    with django_capture_on_commit_callbacks(execute=False):
        desktop = desktop_create(user=employee, template_id=fake_template.pk)
    _work(ACTIONS["provision"], desktop)
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.RUNNING, desktop.last_error
    return desktop


@pytest.mark.parametrize("action", actions_offered(), ids=lambda a: a.name)
def test_each_action_end_to_end_on_the_test_driver(
    action: DesktopAction,
    provisioned: Desktop,
    employee,
    admin_user_,
    django_capture_on_commit_callbacks,
) -> None:
    def actor(step: DesktopAction) -> Any:
        return employee if DesktopRole.OWNER in step.roles else admin_user_

    for step in _path_to(action.sources, start=provisioned.status):
        _act(step, provisioned, actor(step), django_capture_on_commit_callbacks)
    _act(action, provisioned, actor(action), django_capture_on_commit_callbacks)
    provisioned.refresh_from_db()
    assert provisioned.status == action.ends_in, provisioned.last_error
    assert AuditEvent.objects.filter(desktop=provisioned, action=action.audit_verb).exists()
    assert set(actions_valid_in(provisioned.status)) == {
        a.name for a in actions_offered() if provisioned.status in a.sources
    }


# --- helpers --------------------------------------------------------------------------------


def _act(action: DesktopAction, desktop: Desktop, actor: Any, capture: Any) -> None:
    """Ask for the action as a person would, then run the task it queued."""
    with capture(execute=False) as queued:
        desktop_act(actor=actor, desktop=desktop, action=action.name)
    assert queued, f"{action.name} queued nothing"
    _work(action, desktop)


def _work(action: DesktopAction, desktop: Desktop) -> None:
    result = tasks.DESKTOP_TASKS[action.name].apply(args=[str(desktop.pk)])
    assert result.successful(), result.traceback


def _path_to(wanted: frozenset[str], *, start: str) -> list[DesktopAction]:
    """The shortest run of offered actions that brings a desktop from `start` into one of
    the `wanted` states (by where each action leaves it)."""
    queue: deque[tuple[str, list[DesktopAction]]] = deque([(start, [])])
    seen = {start}
    while queue:
        state, path = queue.popleft()
        if state in wanted:
            return path
        for action in actions_offered():
            if state in action.sources and action.ends_in not in seen:
                seen.add(action.ends_in)
                queue.append((action.ends_in, [*path, action]))
    raise AssertionError(f"no run of actions reaches {sorted(wanted)} from {start}")


def _base_volume(conn: libvirt.virConnect, path: str) -> None:
    pool = conn.storagePoolLookupByName(TEST_POOL)
    name = path.rsplit("/", 1)[1]
    if name in pool.listVolumes():
        return
    pool.createXML(
        f"<volume><name>{name}</name><capacity unit='bytes'>{2**30}</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )


def _schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return dict(SchemaGenerator().get_schema(request=None, public=True))


def _admin_actions(user: Any) -> dict[str, Any]:
    request = RequestFactory().get("/admin/vms/desktop/")
    request.user = user
    return dict(admin.site._registry[Desktop].get_actions(request))
