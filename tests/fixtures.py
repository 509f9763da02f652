"""Fixtures: users and roles (factory-boy), the real libvirt host, the demo template and a
real Celery worker process that works on the test database."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import factory
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from tests.factories import DesktopFactory
from tests.servers import dies_with_parent, server_env, var_path
from vms.hypervisor import get_hypervisor
from vms.models import Desktop, Host, Template
from vms.roles import EMPLOYEE_GROUP, HELPDESK_GROUP
from vms.services.catalog.templates import base_volume_name
from vms.services.consoles.leases import KEY_PREFIX as LEASE_PREFIX
from vms.services.networks.egress import fleet_generation_new
from vms.settings_access import name_prefix

ROOT = Path(__file__).resolve().parent.parent


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")


def _in_group(user: Any, name: str) -> Any:
    user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


@pytest.fixture
def employee(db: None) -> Any:
    return _in_group(UserFactory(username="employee1"), EMPLOYEE_GROUP)


@pytest.fixture
def other_employee(db: None) -> Any:
    return _in_group(UserFactory(username="employee2"), EMPLOYEE_GROUP)


@pytest.fixture
def helpdesk_user(db: None) -> Any:
    return _in_group(UserFactory(username="helper"), HELPDESK_GROUP)


@pytest.fixture
def admin_user_(db: None) -> Any:
    return UserFactory(username="boss", is_staff=True, is_superuser=True)


@pytest.fixture
def api_for() -> Callable[[Any], APIClient]:
    """An API client logged in (with a real session) as the given user."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def fake_host(db: None) -> Host:
    """A host on libvirt's test driver whose queue no worker consumes: for tests of the
    request side only (nothing boots)."""
    return Host.objects.create(name="fake", uri="test:///default", storage_pool="default-pool")


@pytest.fixture
def fake_template(fake_host: Host, employee: Any) -> Template:
    template = Template.objects.create(
        name="Office", base_image_path="/default-pool/base.img", vcpus=1, memory_mib=256, disk_gib=1
    )
    template.assigned_groups.add(Group.objects.get(name=EMPLOYEE_GROUP))
    return template


# --- the real hypervisor -------------------------------------------------------------------


@pytest.fixture
def local_host(db: None) -> Iterator[Host]:
    """Host 'local' on the real libvirtd, with the test storage pool. Every domain and
    volume with the tests' name prefix is removed afterwards, whatever the test did."""
    host = Host.objects.create(
        name="local", uri=settings.LIBVIRT_URI, storage_pool=settings.STORAGE_POOL_NAME
    )
    hypervisor = get_hypervisor(host.uri)
    hypervisor.ensure_pool(name=host.storage_pool, path=settings.STORAGE_POOL_PATH)
    yield host
    for domain in hypervisor.list_domains(prefix=name_prefix()):
        hypervisor.undefine(name=domain.name)
    for volume in hypervisor.list_volumes(pool=host.storage_pool, prefix=name_prefix()):
        hypervisor.delete_volume(pool=host.storage_pool, name=volume.name)
    remove_imported_bases(hypervisor, host.storage_pool)


def _demo_base_name() -> str:
    """Every test shares one upload of the demo image; its name follows the image's
    build (size and time), so a rebuilt guest (the same size, other files) is uploaded
    again rather than found under the old name."""
    try:
        found = os.stat(settings.DEMO_GUEST_IMAGE)
    except OSError:
        return base_volume_name(template_name="Demo desktop", token="tests")
    return base_volume_name(
        template_name="Demo desktop", token=f"tests-{found.st_size:x}-{found.st_mtime_ns:x}"
    )


DEMO_BASE = _demo_base_name()
DEMO_BASE_FAMILY = base_volume_name(template_name="Demo desktop", token="tests")[: -len(".qcow2")]


def remove_imported_bases(hypervisor: Any, pool: str) -> None:
    """Delete the base volumes of the templates a test imported: their names are random,
    so no later import reuses them. The demo fixture's shared base stays."""
    paths = set(Template.objects.values_list("base_image_path", flat=True))
    for volume in hypervisor.list_volumes(pool=pool, prefix="base-"):
        if volume.path in paths and volume.name != DEMO_BASE:
            hypervisor.delete_volume(pool=pool, name=volume.name)
        elif volume.name.startswith(DEMO_BASE_FAMILY) and volume.name != DEMO_BASE:
            # An upload of an earlier build of the demo image (every desktop of this
            # test is gone by now, so nothing stands on it).
            hypervisor.delete_volume(pool=pool, name=volume.name)


@pytest.fixture
def demo_template(local_host: Host, employee: Any) -> Template:
    """The demo guest image (built by scripts/setup.sh) as a template for employees."""
    image = settings.DEMO_GUEST_IMAGE
    assert Path(image).is_file(), f"demo guest image {image} is missing: run scripts/setup.sh"
    volume = get_hypervisor(local_host.uri).import_base_volume(
        pool=local_host.storage_pool, name=DEMO_BASE, source_path=image
    )
    template = Template.objects.create(
        name="Demo desktop", base_image_path=volume.path, vcpus=1, memory_mib=128, disk_gib=1
    )
    template.assigned_groups.add(Group.objects.get(name=EMPLOYEE_GROUP))
    return template


def test_driver_host(name: str, index: int, **fields: object) -> Host:
    """A host on libvirt's test driver, up, with proven disk locks. Never contacted over a
    network; its console address is in the lab range (no real machine's)."""
    values = {"uri": "test:///default", "storage_pool": "default-pool",
              "console_address": f"10.213.{240 + index}.2", "last_check_ok": True,
              "disk_lock_ok": True, **fields}  # fmt: skip
    return Host.objects.create(name=name, **values)


@pytest.fixture
def host_pair(fake_host: Host) -> tuple[Host, Host]:
    """Test-driver hosts 'hosta' and 'hostb'; the fake host takes no desktops."""
    Host.objects.filter(pk=fake_host.pk).update(enabled=False)
    return test_driver_host("hosta", 1), test_driver_host("hostb", 2)


@pytest.fixture(autouse=True)
def management_plane_forgotten() -> None:
    """Each test's hosts are its own: no process keeps an earlier test's management plane
    (vms.services.networks.egress.management_plane) for its guards."""
    fleet_generation_new()


@pytest.fixture(autouse=True)
def backup_folders_removed() -> Iterator[None]:
    """The backup folders a test's desktops got in BACKUP_DIR go when it ends."""
    root = Path(settings.BACKUP_DIR)
    before = set(root.iterdir()) if root.is_dir() else set()
    yield
    if root.is_dir():
        for folder in set(root.iterdir()) - before:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def hypervisor(local_host: Host) -> Any:
    return get_hypervisor(local_host.uri)


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (prefork, 2 processes) on the test database and test Redis."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    with running_worker(queues="portal,host.local,host.local.long", name=worker_name()) as worker:
        yield worker


@contextmanager
def running_worker(
    *, queues: str, name: str, concurrency: int = 2, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker for `queues` on the test database and Redis (with settings `env`
    on top), until the block ends; the teardown hook waits for it to be quiet like the
    suite's own worker."""
    log = open(var_path(f"test-worker-{name.split('@')[0]}.log"), "wb")
    command = [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queues,
               "-c", str(concurrency), "--without-gossip", "--without-mingle", "-n", name,
               "--loglevel", "INFO"]  # fmt: skip
    worker = subprocess.Popen(command, cwd=ROOT, env=server_env(**env), stdout=log, stderr=log,
                              preexec_fn=dies_with_parent)  # fmt: skip
    try:
        _wait_for_worker(worker, name)
        _running_workers.append(name)
        yield worker
    finally:
        if name in _running_workers:
            _running_workers.remove(name)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def worker_name() -> str:
    return f"test{os.getpid()}@{socket.gethostname()}"


_running_workers: list[str] = []
QUIET_TIMEOUT_S = 120
# The servers' Redis (broker, Channels layer, console leases), fixed before any test can
# point settings elsewhere (some stop a private Redis and leave settings aimed at it).
SERVERS_REDIS_URL = settings.REDIS_URL
SERVER_FIXTURES = {"celery_worker", "channels_relay", "gateway_relay", "portal_url", "spice_proxy"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Before any fixture of a test that used the suite's servers is torn down (the test
    database is emptied, guests are removed), wait until those servers are quiet: the
    worker has no task in hand or queued, and no relay still carries a console (a relay
    drops a session's lease only after recording its end). A late write would otherwise
    collide with the flush's TRUNCATE (a deadlock seen on a fresh machine)."""
    uses_servers = not SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    still_busy = servers_busy_after_waiting() if uses_servers else ""
    result = yield  # the fixtures are torn down in any case
    if still_busy:
        raise AssertionError(f"servers still busy {QUIET_TIMEOUT_S} s after the test: {still_busy}")
    return result


def servers_busy_after_waiting(*, timeout: float = QUIET_TIMEOUT_S) -> str:
    """Wait until the servers are quiet; what still keeps them busy at the deadline."""
    deadline = time.monotonic() + timeout
    while (busy := _servers_busy()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return busy


def _servers_busy() -> str:
    leases = sum(1 for _ in _servers_redis().scan_iter(match=f"{LEASE_PREFIX}*", count=500))
    if leases:
        return f"{leases} console(s) still open in a relay"
    return _worker_busy()


def _worker_busy() -> str:
    if not _running_workers:
        return ""
    names = ("portal", "host.local", "host.local.long")
    queued = [queue for queue in names if _servers_redis().llen(queue)]
    if queued:
        return f"tasks queued on {queued}"
    from portal.celery import app

    with app.connection_for_write(url=SERVERS_REDIS_URL) as connection:
        inspect = app.control.inspect(
            destination=_running_workers, timeout=5, connection=connection
        )
        for kind in ("active", "reserved", "scheduled"):
            replies = getattr(inspect, kind)()
            if replies is None:
                return f"the worker did not answer '{kind}'"
            if any(replies.values()):
                names = [task.get("name") for tasks in replies.values() for task in tasks]
                return f"{kind} tasks: {names}"
    return ""


@functools.cache
def _servers_redis() -> redis.Redis:
    return redis.Redis.from_url(SERVERS_REDIS_URL, socket_timeout=5)


def _wait_for_worker(worker: subprocess.Popen[bytes], name: str) -> None:
    from portal.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert worker.poll() is None, f"the Celery worker {name} exited; see var/test-worker-*.log"
        if app.control.ping(destination=[name], timeout=0.5):
            return
    raise AssertionError(f"the Celery worker {name} did not answer within 60 s")


def wait_for_status(desktop_id: Any, wanted: str, *, timeout: float = 90) -> Desktop:
    """Poll the database until the desktop reaches `wanted` (fails on error/timeout)."""
    deadline = time.monotonic() + timeout
    desktop = Desktop.objects.get(pk=desktop_id)
    while time.monotonic() < deadline:
        desktop.refresh_from_db()
        if desktop.status == wanted:
            return desktop
        assert desktop.status != "error" or wanted == "error", desktop.last_error
        time.sleep(0.25)
    raise AssertionError(f"desktop stayed {desktop.status}, wanted {wanted}")


def make_desktop(owner: Any, template: Template, **fields: Any) -> Desktop:
    """A desktop row (no guest behind it), through the one factory."""
    desktop: Desktop = DesktopFactory(owner=owner, template=template, **fields)
    return desktop
