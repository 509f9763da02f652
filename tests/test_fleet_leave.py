"""A host leaving the fleet (vms.services.fleet.membership.host_disable, and the management command,
admin form and scripts/lab-host that call it) hands its stopped desktops to other hosts or
refuses with the list; a stopped desktop whose host is gone is still deleted and started,
by a host whose worker runs. Hosts on libvirt's test driver (no guest boots here); the
work is really queued on the real broker, where the test reads it (no worker consumes
these queues). tests/fleet/test_drain.py does it on lab hosts with real workers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command

from tests.factories import DesktopFactory
from vms.models import AuditEvent, Desktop, DesktopStatus, Host, HostStatus
from vms.services.core.errors import HostCannotTake
from vms.services.desktops.requests import desktop_act
from vms.services.fleet.membership import HostNotEmpty, host_disable

pytestmark = pytest.mark.django_db
S = DesktopStatus


@pytest.fixture
def broker(settings: Any, host_pair: tuple[Host, Host]) -> Any:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queues = [host.queue_name for host in host_pair]
    client.delete(*queues)
    yield client
    client.delete(*queues)


def _queued(broker: Any, host: Host) -> list[tuple[str, str]]:
    sent = [json.loads(raw)["headers"] for raw in broker.lrange(host.queue_name, 0, -1)]
    return [(h["task"], h["argsrepr"]) for h in sent]


def test_a_leaving_host_hands_its_stopped_desktops_over_first(
    host_pair, admin_user_, employee, fake_template
) -> None:
    leaving, other = host_pair
    stopped = DesktopFactory(owner=employee, template=fake_template, host=leaving, status=S.STOPPED)
    failed = DesktopFactory(owner=employee, template=fake_template, host=leaving, status=S.ERROR)
    host_disable(name="hosta", actor=admin_user_)
    assert not Host.objects.get(pk=leaving.pk).enabled
    for desktop in (stopped, failed):
        desktop.refresh_from_db()
        assert desktop.host == other
        rehomed = AuditEvent.objects.get(action="desktop.rehomed", desktop=desktop)
        assert rehomed.detail["target"] == "hostb"
    assert AuditEvent.objects.filter(action="host.disable", detail__name="hosta").exists()


def test_a_host_with_desktops_nobody_can_take_refuses_to_leave_and_lists_them(
    host_pair, admin_user_, employee, fake_template
) -> None:
    leaving, other = host_pair
    DesktopFactory(name="Running one", owner=employee, template=fake_template, host=leaving)
    stopped = DesktopFactory(owner=employee, template=fake_template, host=leaving, status=S.STOPPED)
    with pytest.raises(HostNotEmpty) as refused:
        host_disable(name="hosta", actor=admin_user_)
    message = refused.value.message
    assert "Running one of employee" in message and "(running)" in message
    assert "maintenance" in message
    assert Host.objects.get(pk=leaving.pk).enabled  # it stays in the fleet
    stopped.refresh_from_db()
    assert stopped.host == other  # what could be handed over was

    # The command scripts/lab-host leave and down call says the same and fails.
    with pytest.raises(CommandError, match="Running one of employee"):
        call_command("host_register", "hosta", "--disable")
    assert Host.objects.get(pk=leaving.pk).enabled

    # With no other host to take a stopped desktop, it is listed too.
    Host.objects.filter(pk=other.pk).update(enabled=False)
    Desktop.objects.filter(host=leaving, status=S.RUNNING).update(status=S.DELETED)
    Desktop.objects.filter(pk=stopped.pk).update(host=leaving)
    with pytest.raises(HostNotEmpty, match=r"\(stopped\)"):
        host_disable(name="hosta")


@pytest.mark.parametrize("gone", ["disabled", "down"])
def test_a_stopped_desktop_on_a_gone_host_is_deleted_and_started_by_another(
    host_pair, broker, employee, fake_template, django_capture_on_commit_callbacks, gone
) -> None:
    old, other = host_pair
    if gone == "disabled":  # what `scripts/lab-host down` did with desktops still there
        Host.objects.filter(pk=old.pk).update(enabled=False)
    else:
        Host.objects.filter(pk=old.pk).update(status=HostStatus.DOWN)
    to_delete = DesktopFactory(owner=employee, template=fake_template, host=old, status=S.STOPPED)
    to_start = DesktopFactory(owner=employee, template=fake_template, host=old, status=S.STOPPED)

    with django_capture_on_commit_callbacks(execute=True):
        desktop_act(actor=employee, desktop=to_delete, action="delete")
        desktop_act(actor=employee, desktop=to_start, action="start")
    to_delete.refresh_from_db()
    to_start.refresh_from_db()
    assert (to_delete.status, to_delete.host) == (S.DELETING, other)
    assert (to_start.status, to_start.host) == (S.STARTING, other)
    assert sorted(_queued(broker, other)) == sorted([
        ("vms.tasks.desktop_delete", f"['{to_delete.pk}']"),
        ("vms.tasks.desktop_start", f"['{to_start.pk}']"),
    ])  # fmt: skip
    assert _queued(broker, old) == []


def test_a_desktop_that_may_still_run_on_a_down_host_stays_with_it(
    host_pair, broker, employee, fake_template, django_capture_on_commit_callbacks
) -> None:
    old, other = host_pair
    Host.objects.filter(pk=old.pk).update(status=HostStatus.DOWN)
    running = DesktopFactory(owner=employee, template=fake_template, host=old, status=S.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        desktop_act(actor=employee, desktop=running, action="delete")
    running.refresh_from_db()
    assert running.host == old  # its QEMU may still write: only its own host removes it
    assert _queued(broker, other) == []


def test_no_host_to_start_a_stranded_desktop_on_is_a_clear_refusal(
    host_pair, employee, fake_template
) -> None:
    old, other = host_pair
    Host.objects.filter(pk__in=[old.pk, other.pk]).update(enabled=False)
    desktop = DesktopFactory(owner=employee, template=fake_template, host=old, status=S.STOPPED)
    with pytest.raises(HostCannotTake, match="Host hosta is out of service"):
        desktop_act(actor=employee, desktop=desktop, action="start")
    desktop.refresh_from_db()
    assert desktop.status == S.STOPPED and desktop.host == old


def test_unticking_enabled_in_the_admin_goes_through_the_same_refusal(
    client, host_pair, admin_user_, employee, fake_template
) -> None:
    leaving, _other = host_pair
    DesktopFactory(name="Still here", owner=employee, template=fake_template, host=leaving)
    client.force_login(admin_user_)
    form = {"name": "hosta", "uri": "test:///default", "console_address": "10.213.241.2",
            "storage_pool": "default-pool", "capacity_vcpus": 16, "capacity_memory_mib": 4096,
            "capacity_disk_gib": 100, "cpu_overcommit": 1, "memory_overcommit": 1}  # fmt: skip
    page = client.post(f"/admin/vms/host/{leaving.pk}/change/", form)
    assert page.status_code == 200  # the form again, with the reason
    assert "Still here of employee" in page.content.decode()
    assert Host.objects.get(pk=leaving.pk).enabled


def test_a_stopped_desktop_with_work_under_way_stays_until_the_work_ends(
    host_pair, admin_user_, employee, fake_template
) -> None:
    """A restore (or backup, snapshot) of a stopped desktop runs on its host's queue:
    handing the desktop to another host meanwhile would throw the work away."""
    leaving, _other = host_pair
    restoring = DesktopFactory(
        owner=employee, template=fake_template, host=leaving, status=S.STOPPED, progress="restore"
    )
    with pytest.raises(HostNotEmpty):
        host_disable(name="hosta", actor=admin_user_)
    restoring.refresh_from_db()
    assert restoring.host == leaving
    assert not AuditEvent.objects.filter(action="desktop.rehomed", desktop=restoring).exists()
