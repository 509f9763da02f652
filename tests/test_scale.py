"""The control plane grows no faster than the fleet: SQL statements and rows counted at two
sizes of a simulated fleet (tests/simfleet.py: hosts on libvirt's own test driver, one node
description each, with real domains and volumes; rows in the test database).

Counts, not times, so the tests are exact on a busy machine. The larger fleet has four times
the hosts and desktops of the smaller: a figure that grows linearly may grow four times, one
that grew with hosts x desktops would grow sixteen times. bench/scale.py measures the times
at up to 100 hosts and 10,000 desktops (docs/scale.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client

from tests import simfleet
from tests.sqlcount import SqlCount, counting_sql
from vms import tasks
from vms.hypervisor import get_hypervisor
from vms.hypervisor.libvirt_backend import LibvirtHypervisor
from vms.models import Desktop, DesktopStatus
from vms.roles import EMPLOYEE_GROUP
from vms.services.desktops.requests import desktop_create
from vms.services.desktops.thumbnails import thumbnails_refresh
from vms.services.fleet import heartbeat
from vms.services.fleet.placement import host_choose
from vms.services.fleet.reconcile import reconcile_host

pytestmark = pytest.mark.django_db
PER_HOST = 10  # desktops on each simulated host
SMALL, GROWTH = 2, 4  # hosts of the smaller fleet; the larger has GROWTH times as many


def count(work: Callable[[], object]) -> SqlCount:
    with counting_sql() as counted:
        work()
    return counted


def grow(tmp_path: Path) -> simfleet.SimFleet:
    """Add hosts (and their desktops) so the database holds GROWTH times the small fleet."""
    extra = SMALL * (GROWTH - 1)
    return simfleet.fleet_build(
        hosts=extra, desktops=extra * PER_HOST, folder=tmp_path / "more", tag="m"
    )


@pytest.fixture
def small(tmp_path: Path) -> simfleet.SimFleet:
    fleet = simfleet.fleet_build(hosts=SMALL, desktops=SMALL * PER_HOST, folder=tmp_path / "small")
    # The hosts are the real libvirt backend on the test driver, and rows and domains agree.
    assert all(isinstance(get_hypervisor(h.uri), LibvirtHypervisor) for h in fleet.hosts)
    report = reconcile_host(host=fleet.hosts[0])
    assert not (report.state_fixes or report.removed_domains or report.removed_volumes)
    return fleet


def test_one_hosts_reconcile_reads_its_own_desktops_whatever_the_fleets_size(
    small: simfleet.SimFleet, tmp_path: Path
) -> None:
    host = small.hosts[0]
    before = count(lambda: reconcile_host(host=host))
    grow(tmp_path)
    after = count(lambda: reconcile_host(host=host))
    assert before.rows >= PER_HOST  # it did read this host's desktops
    assert (after.statements, after.rows) == (before.statements, before.rows), after.sql


def test_a_reconcile_pass_over_all_hosts_grows_linearly(
    small: simfleet.SimFleet, tmp_path: Path
) -> None:
    before = count(tasks.reconcile_all_hosts)
    grow(tmp_path)
    after = count(tasks.reconcile_all_hosts)
    assert_linear(before, after)


def test_a_heartbeat_round_grows_linearly(small: simfleet.SimFleet, tmp_path: Path) -> None:
    before = count(tasks.heartbeat_all_hosts)
    grow(tmp_path)
    after = count(tasks.heartbeat_all_hosts)
    assert_linear(before, after)


def test_placement_makes_no_query_per_host(small: simfleet.SimFleet, tmp_path: Path) -> None:
    def choose() -> None:
        with transaction.atomic():
            host_choose(template=small.template)

    launches = iter(range(100))

    def launch() -> None:
        user = get_user_model().objects.create(username=f"launcher-{next(launches)}")
        user.groups.add(Group.objects.get(name=EMPLOYEE_GROUP))
        desktop_create(user=user, template_id=small.template.pk)

    before = count(choose), count(launch)
    grow(tmp_path)
    after = count(choose), count(launch)
    for b, a in zip(before, after, strict=True):
        assert a.statements == b.statements, a.sql
        assert_linear(b, a)


@pytest.mark.parametrize("url", ["/admin/vms/host/", "/api/hosts/"])
def test_the_admins_host_list_makes_no_query_per_host(
    small: simfleet.SimFleet, tmp_path: Path, url: str
) -> None:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root-scale", password=None))

    def page() -> Any:
        response = client.get(url)
        assert response.status_code == 200
        assert small.hosts[0].name in response.content.decode()
        return response

    before = count(page)
    grow(tmp_path)
    after = count(page)
    assert after.statements == before.statements, after.sql
    assert_linear(before, after)


def assert_linear(before: SqlCount, after: SqlCount) -> None:
    """At GROWTH times the hosts and desktops, at most GROWTH times the statements and rows
    (a constant part makes a linear figure grow less than that)."""
    assert after.statements <= GROWTH * before.statements, after.sql
    assert after.rows <= GROWTH * max(before.rows, 1), (before.rows, after.rows)


def test_a_hosts_thumbnail_round_makes_no_query_per_desktop(tmp_path: Path, settings: Any) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    # Few desktops: each screenshot is resized and stored as a PNG (about 0.1 s each here).
    few = simfleet.fleet_build(hosts=1, desktops=3, folder=tmp_path / "few", tag="f")
    many = simfleet.fleet_build(hosts=1, desktops=3 * GROWTH, folder=tmp_path / "many", tag="m")
    counted = []
    for fleet in (few, many):
        with counting_sql() as sql:
            stored = thumbnails_refresh(host=fleet.hosts[0])
        running = [d for d in fleet.desktops if d.status == DesktopStatus.RUNNING]
        assert stored == len(running)  # the test driver answers every screenshot
        assert (
            Desktop.objects.filter(host=fleet.hosts[0], thumbnail_at__isnull=False).count()
            == stored
        )
        counted.append(sql)
    assert counted[1].statements == counted[0].statements, counted[1].sql


def test_the_beats_rounds_go_to_each_hosts_own_queue(
    small: simfleet.SimFleet, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    """The real Celery routing on the real broker (no worker consumes these queues): one
    heartbeat and one thumbnail task per host, each on that host's queue."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queues = [host.queue_name for host in small.hosts]
    broker.delete(*queues)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            tasks.heartbeat_all_hosts()
            assert tasks.refresh_thumbnails() == len(small.hosts)
        for host in small.hosts:
            sent = [json.loads(raw)["headers"] for raw in broker.lrange(host.queue_name, 0, -1)]
            assert sorted((h["task"], h["argsrepr"]) for h in sent) == [
                ("vms.tasks.host_heartbeat", f"[{host.pk}]"),
                ("vms.tasks.host_thumbnails", f"[{host.pk}]"),
            ]
            assert all(h["expires"] for h in sent)  # a late round is dropped, not run
    finally:
        broker.delete(*queues)


def test_a_hosts_own_heartbeat_reads_the_same_whatever_the_fleets_size(
    small: simfleet.SimFleet, tmp_path: Path
) -> None:
    host = small.hosts[0]
    # The first successful one also records the detected virt type: warm up until two in a
    # row succeed (in a full run another test may have left the driver's shared state busy).
    assert heartbeat.host_heartbeat(host=host) or heartbeat.host_heartbeat(host=host)
    assert heartbeat.host_heartbeat(host=host)
    before = count(lambda: heartbeat.host_heartbeat(host=host))
    grow(tmp_path)
    after = count(lambda: heartbeat.host_heartbeat(host=host))
    assert before.statements >= 1  # it recorded what it found
    assert (after.statements, after.rows) == (before.statements, before.rows), after.sql


def test_a_reconcile_pass_over_hosts_sharing_their_pool_grows_linearly(tmp_path: Path) -> None:
    """Where the pool directory is shared (NFS, the lab hosts), every host lists every
    desktop's disk: the pass must not look each of them up again for every host."""
    simfleet.fleet_build(hosts=SMALL, desktops=SMALL * PER_HOST, folder=tmp_path / "s",
                         shared_pool=True)  # fmt: skip
    before = count(tasks.reconcile_all_hosts)
    extra = SMALL * (GROWTH - 1)
    simfleet.fleet_build(hosts=extra, desktops=extra * PER_HOST, folder=tmp_path / "m",
                         tag="m", shared_pool=True)  # fmt: skip
    after = count(tasks.reconcile_all_hosts)
    assert_linear(before, after)
    assert all(
        "removed_volumes=[]" in report for report in tasks.reconcile_all_hosts().values()
    )  # every disk listed was recognised as some desktop's
