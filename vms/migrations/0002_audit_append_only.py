"""The audit trail is append-only (security review, issue 10).

- Audit events and console sessions PROTECT the users and desktops they name: deleting
  those would have blanked (SET_NULL) or removed (CASCADE) history.
- On PostgreSQL, triggers refuse UPDATE and DELETE of these rows from any client, as a
  second line behind the ORM guard in vms.models. Allowed: closing an open console session
  once (only its close fields change), and deleting rows older than the per-transaction
  setting `vms.audit_expire_before`, which only the retention path sets. TRUNCATE is not
  covered (the test suite's flush uses it; it needs the table owner anyway).
  SQLite gets no trigger: its flush deletes row by row.
"""

from collections.abc import Callable

import django.db.models.deletion
from django.apps.registry import Apps
from django.conf import settings
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

# What closing a console session writes (vms.services.consoles.console_session_close).
CLOSE_FIELDS = "ARRAY[{}]".format(
    ", ".join(
        f"'{name}'"
        for name in (
            "ended_at",
            "close_reason",
            "bytes_to_guest",
            "bytes_from_guest",
            "dropped_messages",
        )
    )
)

CREATE = [
    """
CREATE OR REPLACE FUNCTION vms_expiry_allows(row_time timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT COALESCE(
    row_time < NULLIF(current_setting('vms.audit_expire_before', true), '')::timestamptz,
    false)
$$
""",
    """
CREATE OR REPLACE FUNCTION vms_auditevent_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND vms_expiry_allows(OLD.created_at) THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END
$$
""",
    f"""
CREATE OR REPLACE FUNCTION vms_consolesession_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND vms_expiry_allows(OLD.ended_at) THEN
    RETURN OLD;
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL
     AND to_jsonb(NEW) - {CLOSE_FIELDS} = to_jsonb(OLD) - {CLOSE_FIELDS} THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'console sessions are append-only (an open session is closed once): % refused',
    TG_OP USING ERRCODE = 'integrity_constraint_violation';
END
$$
""",
    """
CREATE TRIGGER vms_auditevent_append_only BEFORE UPDATE OR DELETE ON vms_auditevent
  FOR EACH ROW EXECUTE FUNCTION vms_auditevent_append_only()
""",
    """
CREATE TRIGGER vms_consolesession_append_only BEFORE UPDATE OR DELETE ON vms_consolesession
  FOR EACH ROW EXECUTE FUNCTION vms_consolesession_append_only()
""",
]

DROP = [
    "DROP TRIGGER IF EXISTS vms_consolesession_append_only ON vms_consolesession",
    "DROP TRIGGER IF EXISTS vms_auditevent_append_only ON vms_auditevent",
    "DROP FUNCTION IF EXISTS vms_consolesession_append_only()",
    "DROP FUNCTION IF EXISTS vms_auditevent_append_only()",
    "DROP FUNCTION IF EXISTS vms_expiry_allows(timestamptz)",
]


def _on_postgresql(statements: list[str]) -> Callable[[Apps, BaseDatabaseSchemaEditor], None]:
    """Run on PostgreSQL only; without parameters, so `%` in RAISE needs no escaping."""

    def run(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("vms", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="auditevent",
            options={"base_manager_name": "objects", "ordering": ["-created_at"]},
        ),
        migrations.AlterModelOptions(
            name="consolesession",
            options={"base_manager_name": "objects", "ordering": ["-started_at"]},
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="actor",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="audit_events",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="desktop",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="audit_events",
                to="vms.desktop",
            ),
        ),
        migrations.AlterField(
            model_name="consolesession",
            name="desktop",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="console_sessions",
                to="vms.desktop",
            ),
        ),
        migrations.AlterField(
            model_name="consolesession",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="console_sessions",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP), elidable=False),
    ]
