"""The audit trail is append-only, for superusers too: audit events and console sessions
cannot be deleted or rewritten through the admin, the ORM or (PostgreSQL) plain SQL. The
one write a console session gets after it opens is its close, once. Only the retention
task removes rows, only those older than AUDIT_RETENTION_DAYS, and it says so in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.test import Client
from django.utils import timezone

from tests.fixtures import make_desktop
from vms.models import AppendOnlyError, AuditEvent, ConsoleSession, Desktop
from vms.services.consoles import console_session_close
from vms.services.core.audit import audit_record
from vms.tasks import apply_audit_retention

pytestmark = pytest.mark.django_db


@pytest.fixture
def desktop(employee, fake_template) -> Desktop:
    return make_desktop(employee, fake_template)


@pytest.fixture
def event(employee, desktop) -> AuditEvent:
    return audit_record(action="desktop.stop", actor=employee, desktop=desktop, source_ip="::1")


@pytest.fixture
def session(helpdesk_user, desktop) -> ConsoleSession:
    return ConsoleSession.objects.create(
        desktop=desktop, user=helpdesk_user, mode="view", source_ip="192.0.2.1"
    )


def _closed(session: ConsoleSession) -> ConsoleSession:
    console_session_close(session_id=session.pk, reason="closed by the browser", bytes_to_guest=7)
    session.refresh_from_db()
    assert session.ended_at is not None
    return session


def _stored(row: AuditEvent | ConsoleSession) -> dict[str, Any]:
    return type(row).objects.filter(pk=row.pk).values().get()


def _unchanged(row: AuditEvent | ConsoleSession) -> None:
    """The row is still there with exactly the values this (unmodified) object holds."""
    fields = {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields}
    assert _stored(row) == fields


# --- the admin --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["auditevent", "consolesession"])
def test_a_superuser_cannot_delete_from_the_admin(admin_user_, event, session, kind) -> None:
    row = {"auditevent": event, "consolesession": session}[kind]
    client = Client()
    client.force_login(admin_user_)
    base = f"/admin/vms/{kind}/"
    changelist = client.get(base)
    assert changelist.status_code == 200
    assert b"delete_selected" not in changelist.content
    bulk = {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    client.post(base, bulk)
    assert client.get(f"{base}{row.pk}/delete/").status_code == 403
    assert client.post(f"{base}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    forged = {"action": "forged", "reason": "x"}
    assert client.post(f"{base}{row.pk}/change/", forged).status_code == 403
    page = client.get(f"{base}{row.pk}/change/")
    assert page.status_code == 200  # readable
    assert b'name="_save"' not in page.content
    _unchanged(row)


# --- the ORM ---------------------------------------------------------------------------------

REWRITES: dict[str, Callable[[Any], Any]] = {
    "instance delete": lambda row: row.delete(),
    "queryset delete": lambda row: type(row).objects.filter(pk=row.pk).delete(),
    "delete everything": lambda row: type(row).objects.all().delete(),
    "queryset update": lambda row: type(row).objects.filter(pk=row.pk).update(source_ip="6.6.6.6"),
    "instance save": lambda row: (setattr(row, "source_ip", "6.6.6.6"), row.save()),
    "save of some fields": lambda row: (
        setattr(row, "source_ip", "6.6.6.6"),
        row.save(update_fields=["source_ip"]),
    ),
    "bulk update": lambda row: type(row).objects.bulk_update(
        [type(row)(pk=row.pk, source_ip="6.6.6.6")], ["source_ip"]
    ),
    "update_or_create": lambda row: type(row).objects.update_or_create(
        pk=row.pk, defaults={"source_ip": "6.6.6.6"}
    ),
}


@pytest.mark.parametrize("how", REWRITES)
@pytest.mark.parametrize("kind", ["event", "open session", "closed session"])
def test_the_orm_refuses_to_rewrite_or_delete_history(how, kind, event, session) -> None:
    row = {"event": event, "open session": session, "closed session": None}[kind]
    row = row or _closed(session)
    before = _stored(row)
    with pytest.raises(AppendOnlyError), transaction.atomic():
        REWRITES[how](row)
    assert _stored(row) == before


def test_a_desktops_events_cannot_be_detached(desktop, event) -> None:
    with pytest.raises(AppendOnlyError):
        desktop.audit_events.clear()
    _unchanged(event)


def test_an_insert_cannot_overwrite_an_existing_row(event) -> None:
    forged = AuditEvent(pk=event.pk, action="forged")
    with pytest.raises(IntegrityError), transaction.atomic():
        forged.save()  # never an UPDATE behind the caller's back
    _unchanged(event)
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create(
            [forged], update_conflicts=True, unique_fields=["id"], update_fields=["action"]
        )
    _unchanged(event)


def test_a_console_session_is_closed_once_and_then_never_rewritten(session) -> None:
    closed = _closed(session)
    assert closed.close_reason == "closed by the browser" and closed.bytes_to_guest == 7
    console_session_close(session_id=session.pk, reason="again", bytes_to_guest=99)  # a no-op
    _unchanged(closed)
    assert AuditEvent.objects.filter(action="console.close").count() == 1
    with pytest.raises(AppendOnlyError):
        ConsoleSession.objects.filter(pk=session.pk).update(
            ended_at=timezone.now(), close_reason="rewritten"
        )
    _unchanged(closed)


@pytest.mark.parametrize(
    "changes",
    [
        {"reason": "made up later"},
        {"mode": "full"},
        {"ended_at": None, "bytes_to_guest": 1},
        {"close_reason": "no end time"},
        {"ended_at": timezone.now(), "reason": "rewritten while closing"},
    ],
)
def test_an_open_session_takes_only_its_close(session, changes) -> None:
    with pytest.raises(AppendOnlyError):
        ConsoleSession.objects.filter(pk=session.pk, ended_at__isnull=True).update(**changes)
    _unchanged(session)


def test_deleting_the_user_or_desktop_behind_history_is_refused(employee, event, session) -> None:
    with pytest.raises(ProtectedError), transaction.atomic():
        session.user.delete()  # would have removed their console sessions
    with pytest.raises(ProtectedError), transaction.atomic():
        employee.desktops.all().delete()  # would have removed sessions and blanked events
    with pytest.raises(ProtectedError), transaction.atomic():
        Desktop.objects.all().delete()
    _unchanged(event)
    _unchanged(session)
    assert AuditEvent.objects.get(pk=event.pk).actor == employee


def test_a_user_without_history_can_still_be_deleted(django_user_model) -> None:
    stranger = django_user_model.objects.create_user(username="never-did-anything")
    stranger.delete()
    assert not django_user_model.objects.filter(username="never-did-anything").exists()


# --- PostgreSQL: the same rules in the database -----------------------------------------------


def _sql(statement: str, *params: Any) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM vms_auditevent WHERE id = %s",
        "UPDATE vms_auditevent SET action = 'forged' WHERE id = %s",
        "UPDATE vms_auditevent SET actor_id = NULL WHERE id = %s",
    ],
)
def test_postgresql_refuses_raw_rewrites_of_events(event, statement) -> None:
    assert connection.vendor == "postgresql", "the trigger is PostgreSQL's (scripts/test uses it)"
    with pytest.raises(IntegrityError, match="append-only"):
        _sql(statement, event.pk)
    _unchanged(event)


def test_postgresql_lets_an_open_session_close_once(session) -> None:
    assert connection.vendor == "postgresql", "the trigger is PostgreSQL's (scripts/test uses it)"
    with pytest.raises(IntegrityError, match="append-only"):
        _sql("UPDATE vms_consolesession SET reason = 'x' WHERE id = %s", session.pk)
    with pytest.raises(IntegrityError, match="append-only"):
        _sql("DELETE FROM vms_consolesession WHERE id = %s", session.pk)
    close = "UPDATE vms_consolesession SET ended_at = now(), bytes_to_guest = 5 WHERE id = %s"
    assert _sql(close, session.pk) == 1
    with pytest.raises(IntegrityError, match="append-only"):
        _sql(close, session.pk)  # a closed session is final
    session.refresh_from_db()
    assert session.ended_at is not None and session.bytes_to_guest == 5


# --- retention --------------------------------------------------------------------------------


def _old_event(action: str, *, days: int) -> int:
    """An event written `days` ago (inserted with its date: rows are never updated)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO vms_auditevent (created_at, action, detail) VALUES (%s, %s, %s)",
            [timezone.now() - timedelta(days=days), action, "{}"],
        )
    return AuditEvent.objects.get(action=action).pk


def _old_session(session: ConsoleSession, *, days: int) -> ConsoleSession:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO vms_consolesession (desktop_id, user_id, mode, reason, relay, started_at,"
            " ended_at, bytes_to_guest, bytes_from_guest, dropped_messages, close_reason)"
            " VALUES (%s, %s, 'view', '', 'channels', %s, %s, 0, 0, 0, '')",
            [
                session.desktop_id.hex,  # a uuid on PostgreSQL, 32 hex digits on SQLite
                session.user_id,
                timezone.now() - timedelta(days=days + 1),
                timezone.now() - timedelta(days=days),
            ],
        )
    return ConsoleSession.objects.exclude(pk=session.pk).get()


def test_retention_removes_only_rows_older_than_the_setting_and_says_so(
    settings, event, session
) -> None:
    settings.AUDIT_RETENTION_DAYS = 30
    old_event = _old_event("desktop.ancient", days=31)
    kept_event = _old_event("desktop.recent", days=29)
    old_session = _old_session(session, days=31)
    recent_session = _closed(session)  # closed now; a session still open is never removed

    removed = apply_audit_retention.apply().get()

    assert removed == {"audit_events": 1, "console_sessions": 1}
    assert not AuditEvent.objects.filter(pk=old_event).exists()
    assert not ConsoleSession.objects.filter(pk=old_session.pk).exists()
    assert AuditEvent.objects.filter(pk=kept_event).exists()
    _unchanged(event)
    _unchanged(recent_session)
    report = AuditEvent.objects.get(action="audit.retention")
    assert report.actor is None
    assert report.detail["audit_events"] == 1 and report.detail["console_sessions"] == 1
    assert report.detail["retention_days"] == 30
    # The privileged path closes behind itself: plain deletes are refused again.
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=kept_event).delete()


def test_postgresql_lets_only_the_retention_path_delete_old_rows(settings, event) -> None:
    assert connection.vendor == "postgresql", "the trigger is PostgreSQL's (scripts/test uses it)"
    settings.AUDIT_RETENTION_DAYS = 30
    old = _old_event("desktop.ancient", days=31)
    with pytest.raises(IntegrityError, match="append-only"):
        _sql("DELETE FROM vms_auditevent WHERE id = %s", old)  # old, but not through retention
    assert apply_audit_retention.apply().get()["audit_events"] == 1
    assert not AuditEvent.objects.filter(pk=old).exists()
    also_old = _old_event("desktop.ancient-too", days=31)
    with pytest.raises(IntegrityError, match="append-only"):  # and the door is shut again
        _sql("DELETE FROM vms_auditevent WHERE id = %s", also_old)
    _unchanged(event)


def _portal_role() -> str:
    """The role the tests (and the portal) connect as: not a superuser, which could switch
    every trigger off (session_replication_role) and is out of reach of any such rule."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        role, superuser = cursor.fetchone()
    assert not superuser, f"the tests must connect as the portal's own role, not {role}"
    return str(role)


@pytest.mark.parametrize("expire_before", ["infinity", "9999-12-31T00:00:00+00:00"])
def test_postgresql_no_session_setting_opens_the_audit_triggers(
    event, session, expire_before
) -> None:
    """Migration 0002 opened the triggers for whoever set `vms.audit_expire_before`."""
    assert connection.vendor == "postgresql", "the trigger is PostgreSQL's (scripts/test uses it)"
    _portal_role()
    old = _old_event("desktop.ancient", days=400)
    old_session = _old_session(session, days=400)
    statements = [
        ("DELETE FROM vms_auditevent WHERE id = %s", old),
        ("DELETE FROM vms_auditevent WHERE id = %s", event.pk),
        ("UPDATE vms_auditevent SET action = 'forged' WHERE id = %s", old),
        ("DELETE FROM vms_consolesession WHERE id = %s", old_session.pk),
        ("UPDATE vms_consolesession SET reason = 'forged' WHERE id = %s", old_session.pk),
    ]
    for statement, pk in statements:
        with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('vms.audit_expire_before', %s, true)", [expire_before]
                )
                cursor.execute(statement, [pk])
    assert AuditEvent.objects.filter(pk=old).exists()
    assert AuditEvent.objects.get(pk=old).action == "desktop.ancient"
    _unchanged(event)
    _unchanged(old_session)


def test_postgresql_expiry_spares_the_last_day_and_is_recorded(event) -> None:
    """The expiry table is the one way in, for any role that can write rows: it never
    removes a row younger than a day, and each use stays recorded."""
    assert connection.vendor == "postgresql", "the trigger is PostgreSQL's (scripts/test uses it)"
    _portal_role()
    yesterday_ish = _old_event("desktop.recent", days=0)
    for days in (0, -5):
        with pytest.raises(IntegrityError, match="at least 1"):
            _sql("INSERT INTO vms_audit_expiry (retention_days) VALUES (%s)", days)
    ancient = _old_event("desktop.ancient", days=3)
    assert _sql("INSERT INTO vms_audit_expiry (retention_days) VALUES (1)") == 1
    assert not AuditEvent.objects.filter(pk=ancient).exists()
    assert AuditEvent.objects.filter(pk=yesterday_ish).exists()
    _unchanged(event)
    with connection.cursor() as cursor:
        cursor.execute("SELECT events_removed, cutoff < now() FROM vms_audit_expiry")
        assert cursor.fetchall() == [(1, True)]
    for statement in ("DELETE FROM vms_audit_expiry", "UPDATE vms_audit_expiry SET cutoff = now()"):
        with pytest.raises(IntegrityError, match="append-only"):
            _sql(statement)


def test_retention_zero_keeps_everything(settings, event) -> None:
    settings.AUDIT_RETENTION_DAYS = 0
    ancient = _old_event("desktop.ancient", days=5000)
    assert apply_audit_retention.apply().get() == {"audit_events": 0, "console_sessions": 0}
    assert AuditEvent.objects.filter(pk=ancient).exists()
    assert not AuditEvent.objects.filter(action="audit.retention").exists()


def test_retention_runs_on_the_beat_schedule(settings) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["audit-retention"]
    assert entry["task"] == "vms.tasks.apply_audit_retention"
    assert apply_audit_retention.name == entry["task"]
