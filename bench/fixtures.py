"""The bench's data: its own PostgreSQL database, roles, hosts, the desktop template, users
and their session cookies. Django must be set up (bench.settings) before importing this."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psycopg
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.db import connections

from bench.common import LIBVIRT_URI, POOL, POOL_PATH, PREFIX, log
from tests.factories import DesktopFactory
from vms.hypervisor import get_hypervisor
from vms.models import Desktop, Host, Template
from vms.roles import EMPLOYEE_GROUP, HELPDESK_GROUP
from vms.services.demo import setup_roles

User = get_user_model()
BASE_VOLUME = f"{PREFIX}base-demo.qcow2"
TEMPLATE_NAME = "Bench desktop"


def database_prepare() -> None:
    """Make the bench database anew and migrate it."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        raise SystemExit("the bench runs on PostgreSQL (BENCH_DATABASE_URL)")
    url = urlsplit(os.environ["DATABASE_URL"])
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=int(db["PORT"] or 5432),
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        # A new database each run: one left by another checkout's schema (a branch with
        # more tables) cannot be emptied by `flush`, and must not be measured against.
        log(f"creating database {db['NAME']} on {url.hostname}")
        connections.close_all()
        conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    call_command("migrate", verbosity=0, interactive=False)
    setup_roles()


def local_host() -> Host:
    """Host 'local' on the real libvirtd, with the bench's own storage pool."""
    hv = get_hypervisor(LIBVIRT_URI)
    hv.ensure_pool(name=POOL, path=POOL_PATH)
    host, _ = Host.objects.get_or_create(
        name="local",
        defaults={"uri": LIBVIRT_URI, "storage_pool": POOL, "capacity_vcpus": 64,
                  "capacity_memory_mib": 16384},
    )  # fmt: skip
    return host


def bench_template() -> Template:
    """The demo guest image (scripts/build-guest-image.sh) as a template for employees."""
    image = settings.DEMO_GUEST_IMAGE
    if not os.path.isfile(image):
        raise SystemExit(f"demo guest image {image} is missing: run scripts/setup.sh first")
    volume = get_hypervisor(LIBVIRT_URI).import_base_volume(
        pool=POOL, name=BASE_VOLUME, source_path=image
    )
    template, _ = Template.objects.get_or_create(
        name=TEMPLATE_NAME,
        defaults={"base_image_path": volume.path, "vcpus": 1, "memory_mib": 128, "disk_gib": 1},
    )
    template.assigned_groups.add(Group.objects.get(name=EMPLOYEE_GROUP))
    return template


def make_user(username: str, *, helpdesk: bool = False) -> object:
    user, _ = User.objects.get_or_create(username=username)
    user.set_unusable_password()
    user.save()
    user.groups.add(Group.objects.get(name=HELPDESK_GROUP if helpdesk else EMPLOYEE_GROUP))
    return user


def session_key(user: object) -> str:
    """A logged-in session for `user` (what the login form would store), as its cookie value."""
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)  # type: ignore[attr-defined]
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()  # type: ignore[attr-defined]
    store.create()
    return str(store.session_key)


def running_desktop(owner: object, host: Host, template: Template, *, domain: str) -> Desktop:
    """A desktop row that says 'running' on `domain` (for the echo host; no libvirt work)."""
    desktop: Desktop = DesktopFactory(
        owner=owner,
        template=template,
        host=host,
        name="echo display",
        domain_name=domain,
        volume_name=f"{domain}.qcow2",
        memory_mib=128,
    )
    return desktop
