"""Audit expiry that no session setting can open (issue 25).

Migration 0002 let a DELETE of audit rows through for rows older than the per-transaction
setting `vms.audit_expire_before`: any role that could reach the tables could
`set_config(...)` it to the future and delete everything, recent rows included.

Now the append-only triggers let a DELETE through only when it runs inside another trigger
(`pg_trigger_depth() > 1`) and the row is more than a day old. The one trigger that deletes
audit rows is the one on `vms_audit_expiry`: inserting a row there (`retention_days` >= 1)
removes the events and closed console sessions older than that many days, and the row keeps
the cut-off and the counts; it is itself append-only. A client cannot run a statement of its
own inside a trigger, and no setting changes the trigger depth, so a role that can write
rows (the portal's included) can only expire rows older than a day, through that table, and
each time leaves a row there. (A role that may change the schema, the tables' owner, could
still drop the triggers: see docs/threat-model.md.) SQLite gets no trigger, as before.
"""

from collections.abc import Callable

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

CREATE = [
    """
CREATE TABLE IF NOT EXISTS vms_audit_expiry (
  id bigserial PRIMARY KEY,
  requested_at timestamptz NOT NULL DEFAULT now(),
  retention_days integer NOT NULL,
  cutoff timestamptz,
  events_removed bigint NOT NULL DEFAULT 0,
  sessions_removed bigint NOT NULL DEFAULT 0
)
""",
    """
CREATE OR REPLACE FUNCTION vms_audit_expiry_run() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  removed bigint;
BEGIN
  IF NEW.retention_days IS NULL OR NEW.retention_days < 1 THEN
    RAISE EXCEPTION 'audit expiry: retention_days must be at least 1'
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  NEW.requested_at := now();
  NEW.cutoff := now() - make_interval(days => NEW.retention_days);
  DELETE FROM vms_auditevent WHERE created_at < NEW.cutoff;
  GET DIAGNOSTICS removed = ROW_COUNT;
  NEW.events_removed := removed;
  DELETE FROM vms_consolesession WHERE ended_at < NEW.cutoff;
  GET DIAGNOSTICS removed = ROW_COUNT;
  NEW.sessions_removed := removed;
  RETURN NEW;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION vms_audit_expiry_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit expiry runs are append-only: % refused', TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END
$$
""",
    "DROP TRIGGER IF EXISTS vms_audit_expiry_run ON vms_audit_expiry",
    """
CREATE TRIGGER vms_audit_expiry_run BEFORE INSERT ON vms_audit_expiry
  FOR EACH ROW EXECUTE FUNCTION vms_audit_expiry_run()
""",
    "DROP TRIGGER IF EXISTS vms_audit_expiry_append_only ON vms_audit_expiry",
    """
CREATE TRIGGER vms_audit_expiry_append_only BEFORE UPDATE OR DELETE ON vms_audit_expiry
  FOR EACH ROW EXECUTE FUNCTION vms_audit_expiry_append_only()
""",
    # The check both append-only triggers call: no session setting is read any more.
    """
CREATE OR REPLACE FUNCTION vms_expiry_allows(row_time timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT pg_trigger_depth() > 1 AND COALESCE(row_time < now() - interval '1 day', false)
$$
""",
]

# Back to migration 0002's check (and no expiry table).
DROP = [
    """
CREATE OR REPLACE FUNCTION vms_expiry_allows(row_time timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT COALESCE(
    row_time < NULLIF(current_setting('vms.audit_expire_before', true), '')::timestamptz,
    false)
$$
""",
    "DROP TABLE IF EXISTS vms_audit_expiry",
    "DROP FUNCTION IF EXISTS vms_audit_expiry_run()",
    "DROP FUNCTION IF EXISTS vms_audit_expiry_append_only()",
]


def on_postgresql(statements: list[str]) -> Callable[[Apps, BaseDatabaseSchemaEditor], None]:
    """Run on PostgreSQL only; without parameters, so `%` in RAISE needs no escaping."""

    def run(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [("vms", "0011_template_version_source")]

    operations = [
        migrations.RunPython(on_postgresql(CREATE), on_postgresql(DROP), elidable=False),
    ]
