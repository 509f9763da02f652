"""The audit verbs (vms.services.core.audit.AuditVerb): every audit row the portal writes
names a member, and every verb written, read or expected anywhere is one (the values are
what stored rows hold, so they never change)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from vms.models import BackupStatus, DesktopStatus, RestoreStatus
from vms.selectors import SPICE_SET_OPEN_ACTION
from vms.services.core.audit import AuditVerb
from vms.services.desktops.actions import ACTIONS

ROOT = Path(__file__).resolve().parent.parent


def _trees(*folders: str) -> Iterator[tuple[Path, ast.AST]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _calls(name: str) -> Iterator[tuple[Path, ast.Call]]:
    for path, tree in _trees("vms", "portal"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    yield path, node


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_audit_row_written_names_a_verb() -> None:
    calls = list(_calls("audit_record"))
    assert len(calls) > 40
    wrong = []
    for path, call in calls:
        action = _keyword(call, "action")
        where = f"{path.relative_to(ROOT)}:{call.lineno}"
        if isinstance(action, ast.Attribute) and getattr(action.value, "id", "") == "AuditVerb":
            if action.attr not in AuditVerb.__members__:
                wrong.append(f"{where}: no AuditVerb.{action.attr}")
        elif isinstance(action, ast.Call) and getattr(action.func, "id", "") == "AuditVerb":
            continue  # a verb made from a state or an action name: checked below
        elif not isinstance(action, ast.Name):  # a parameter typed AuditVerb (mypy checks)
            wrong.append(f"{where}: {ast.unparse(action) if action else 'no action'}")
    assert wrong == []


def test_every_verb_in_the_code_and_tests_is_a_member() -> None:
    # Every `action="<group>.<verb>"` written, filtered on or expected, in code and tests.
    used = {}
    for path, tree in _trees("vms", "tests"):
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in ("action", "action__in"):
                values = (
                    node.value.elts
                    if isinstance(node.value, ast.List | ast.Tuple)
                    else [node.value]
                )
                for value in values:
                    if isinstance(value, ast.Constant) and "." in str(value.value):
                        used[str(value.value)] = f"{path.relative_to(ROOT)}:{node.value.lineno}"
    assert len(used) > 20
    unknown = {verb: where for verb, where in used.items() if verb not in set(AuditVerb)}
    assert unknown == {}


def test_the_verbs_made_from_names_are_members() -> None:
    # desktop_act: the action's verb
    for action in ACTIONS.values():
        assert action.audit_verb in set(AuditVerb), action.name
    # desktop_advance: "desktop.<the state it moved to>"
    moved_to = set()
    for _path, call in _calls("desktop_advance"):
        new = _keyword(call, "new")
        assert isinstance(new, ast.Attribute), ast.unparse(call)
        moved_to.add(DesktopStatus[new.attr])
    assert moved_to
    for state in moved_to | {DesktopStatus.ERROR, DesktopStatus.RECOVERING}:
        assert f"desktop.{state}" in set(AuditVerb)
    # how a backup or a restore that did not finish ended
    for ended in (BackupStatus.CANCELLED, BackupStatus.FAILED):
        assert f"backup.{ended}" in set(AuditVerb)
    for ended in (RestoreStatus.CANCELLED, RestoreStatus.FAILED):
        assert f"backup.restore_{ended}" in set(AuditVerb)
    # the selectors (which import no services) read this one by its value
    assert SPICE_SET_OPEN_ACTION == AuditVerb.CONSOLE_SPICE_CONNECT


def test_a_verb_is_stored_as_its_value() -> None:
    assert str(AuditVerb.DESKTOP_RECONCILED) == "desktop.reconciled"
    assert all(verb.value.count(".") == 1 and verb.value.islower() for verb in AuditVerb)
    assert len({verb.value for verb in AuditVerb}) == len(AuditVerb)
