"""First-run set-up of a single-machine portal: roles, the local host, demo template and
demo users. Every step is idempotent, so `scripts/run` can call it on each start."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured

from vms.models import Network, NetworkMode, Template, TemplateNetwork
from vms.roles import EMPLOYEE_GROUP, HELPDESK_GROUP
from vms.services.catalog.templates import template_import
from vms.services.core.audit import AuditVerb, audit_record
from vms.services.core.errors import ServiceError
from vms.services.fleet.heartbeat import host_heartbeat
from vms.services.fleet.hosts import host_ensure_local
from vms.services.networks.desktop_networks import network_clean

log = logging.getLogger(__name__)
DEMO_TEMPLATE = "Demo desktop"
DESKTOPS_NETWORK = "desktops"
DEMO_USERS: dict[str, dict[str, Any]] = {
    "admin": {"is_staff": True, "is_superuser": True, "groups": []},
    "employee": {"groups": [EMPLOYEE_GROUP]},
    "helpdesk": {"groups": [HELPDESK_GROUP]},
}


@dataclass(frozen=True)
class NewLogin:
    """A demo user made in this run, with the password to print once."""

    username: str
    password: str
    from_env: bool


def setup_roles() -> None:
    for name in (EMPLOYEE_GROUP, HELPDESK_GROUP):
        Group.objects.get_or_create(name=name)


def setup_demo_template() -> Template | None:
    """Import the demo guest image as a template for the employee group (once)."""
    existing = Template.objects.filter(name=DEMO_TEMPLATE).first()
    if existing is not None:
        return existing
    if not Path(settings.DEMO_GUEST_IMAGE).is_file():
        log.warning("demo image %s is missing; no demo template", settings.DEMO_GUEST_IMAGE)
        return None
    template = template_import(
        name=DEMO_TEMPLATE,
        image_path=settings.DEMO_GUEST_IMAGE,
        vcpus=1,
        memory_mib=128,
        disk_gib=1,
        os_label="Busybox Linux",
        description="A tiny Linux desktop that boots to a shell in seconds.",
    )
    template.assigned_groups.add(Group.objects.get(name=EMPLOYEE_GROUP))
    return template


def setup_desktops_network(*, template: Template | None) -> Network:
    """The NAT network `desktops` (DESKTOPS_NETWORK_SUBNET), with the demo template on it (once).
    It is created on a host by the first desktop there or by reconcile; `portal_setup`
    creates it on the machine's own host at once."""
    network = Network.objects.filter(name=DESKTOPS_NETWORK).first()
    if network is None:
        subnet = str(settings.DESKTOPS_NETWORK_SUBNET)
        network = Network(name=DESKTOPS_NETWORK, mode=NetworkMode.NAT, subnet=subnet)
        try:
            network_clean(network)
        except ServiceError as exc:
            raise ImproperlyConfigured(f"DESKTOPS_NETWORK_SUBNET: {exc.message}") from exc
        network.save()
        audit_record(action=AuditVerb.NETWORK_CREATE, network=network.name, subnet=network.subnet)
    if template is not None and not TemplateNetwork.objects.filter(template=template).exists():
        TemplateNetwork.objects.create(template=template, network=network, position=0)
    return network


def setup_demo_users(*, env_passwords: dict[str, str]) -> list[NewLogin]:
    """Create the demo users that do not exist yet; existing ones are left alone."""
    made = []
    for username, spec in DEMO_USERS.items():
        if get_user_model().objects.filter(username=username).exists():
            continue
        password = env_passwords.get(username) or secrets.token_urlsafe(12)
        user = get_user_model().objects.create_user(
            username=username,
            password=password,
            is_staff=spec.get("is_staff", False),
            is_superuser=spec.get("is_superuser", False),
        )
        user.groups.set(Group.objects.filter(name__in=spec["groups"]))
        made.append(NewLogin(username, password, from_env=username in env_passwords))
    return made


def setup_single_machine(*, env_passwords: dict[str, str]) -> list[NewLogin]:
    """All first-run steps, in order."""
    setup_roles()
    host = host_ensure_local()
    if not host_heartbeat(host=host):
        host.refresh_from_db()
        log.error("libvirt at %s is not usable: %s", host.uri, host.last_check_error)
    setup_desktops_network(template=setup_demo_template())
    return setup_demo_users(env_passwords=env_passwords)
