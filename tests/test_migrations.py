"""The migrations match the models, and renaming Host.libvirt_uri to Host.uri keeps every
host's address (schema changes run inside the test's transaction and are rolled back)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("vms", "0002_audit_append_only")]
AFTER = [("vms", "0003_host_uri")]


@pytest.mark.django_db
def test_models_have_no_unmigrated_changes() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db
def test_host_uri_rename_keeps_each_hosts_address() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old_host = executor.loader.project_state(BEFORE).apps.get_model("vms", "Host")
    old_host.objects.create(name="hv1", libvirt_uri="qemu+ssh://root@hv1/system")

    executor = MigrationExecutor(connection)  # reads what is applied now
    executor.migrate(AFTER)
    new_host = executor.loader.project_state(AFTER).apps.get_model("vms", "Host")
    assert new_host.objects.get(name="hv1").uri == "qemu+ssh://root@hv1/system"
    assert "libvirt_uri" not in {f.name for f in new_host._meta.get_fields()}
