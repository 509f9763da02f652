"""Platform: settings from the environment, /healthz, the first-run set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _django_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILE_INTERVAL_S", "soon"),
        ("DJANGO_DEBUG", "maybe"),
        ("VIRT_TYPE", "xen"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("CSRF_TRUSTED_ORIGINS", "portal.example.com"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("CONSOLE_TICKET_TTL_S", "600"),
        ("SECRET_KEY", "short"),
        ("IMAGE_MAX_VIRTUAL_SIZE_GIB", "big"),
        ("IMAGE_MAX_VIRTUAL_SIZE_GIB", "0"),
        ("HEALTHZ_TOKEN", "short"),
        ("HEALTHZ_TOKEN", "a token with spaces that is long enough anyway"),
        ("TRUSTED_PROXIES", "10.0.0.5,proxy.example.com"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("AUDIT_RETENTION_DAYS", "-1"),
        ("AUDIT_RETENTION_DAYS", "a year"),
        ("DB_POOL_MAX_SIZE", "-1"),
        ("DB_POOL_MAX_SIZE", "many"),
        ("SPICE_PROXY_BIND", "6082"),
        ("SPICE_PROXY_BIND", "127.0.0.1:70000"),
        ("SPICE_PROXY_URL", "https://desk.example.com:6082"),
        ("SPICE_PROXY_URL", "http://desk.example.com"),
        ("SPICE_PROXY_URL", "http://user:pw@desk.example.com:6082"),
        ("SPICE_PROXY_URL", "http://desk.example.com:port"),
        ("SPICE_PROXY_MAX_CONNECTIONS", "0"),
        ("DESKTOP_EGRESS_DENY", "10.0.0.0/33"),
        ("DESKTOP_EGRESS_DENY", "mgmt.example.com"),
        ("DESKTOP_EGRESS_DENY", "fd00::/8"),
        ("DESKTOP_EGRESS_ALLOW", "10.1.2.3/40"),
        ("SPICE_PROXY_MAX_CONNECTIONS_PER_USER", "0"),
        ("SPICE_PROXY_MAX_CONNECTIONS_PER_USER", "many"),
        ("SPICE_TLS_DIR", "/nonexistent/spice-tls"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    done = _django_check(**{variable: value})
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert variable in done.stderr


def test_good_settings_pass_the_check() -> None:
    done = _django_check()
    assert done.returncode == 0, done.stderr


def test_deploy_check_is_clean_with_production_settings() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PORTAL_TLS": "true",
            "SECRET_KEY": "k" * 20 + "Qz8#vT2!pL9@xW4$" + "m" * 30,
            "ALLOWED_HOSTS": "portal.example.com",
            "METRICS_TOKEN": "m" * 40,  # else /metrics behind TLS is worth a warning
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.django_db
def test_healthz_reports_each_part_and_never_raises(admin_client, settings, local_host) -> None:
    from django.utils import timezone

    from vms.models import Host

    Host.objects.filter(pk=local_host.pk).update(last_checked_at=timezone.now(), last_check_ok=True)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = admin_client.get("/healthz")  # the detail is for staff (or the token)
    body = response.json()
    assert response.status_code == 503
    assert set(body["checks"]) == {"database", "redis", "celery", "libvirt"}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["libvirt"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["detail"]


@pytest.mark.django_db
def test_healthz_flags_a_stale_host(admin_client, local_host) -> None:
    response = admin_client.get("/healthz")
    assert response.json()["checks"]["libvirt"] == {"ok": False, "detail": "local: not checked yet"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.libvirt
def test_healthz_all_green_with_worker_and_heartbeat(
    admin_client, celery_worker, local_host
) -> None:
    from vms.services.fleet.heartbeat import host_heartbeat

    assert host_heartbeat(host=local_host)
    response = admin_client.get("/healthz")
    assert response.status_code == 200, response.content
    assert all(check["ok"] for check in response.json()["checks"].values())


@pytest.mark.django_db(transaction=True)
@pytest.mark.libvirt
def test_first_run_setup_is_idempotent(settings) -> None:
    from django.contrib.auth import get_user_model

    from tests.fixtures import remove_imported_bases
    from vms.hypervisor import get_hypervisor
    from vms.models import Host, Template
    from vms.services.demo import DEMO_TEMPLATE, setup_single_machine
    from vms.settings_access import name_prefix

    made = setup_single_machine(env_passwords={"employee": "from-env-pw"})
    try:
        assert {login.username for login in made} == {"admin", "employee", "helpdesk"}
        assert get_user_model().objects.get(username="employee").check_password("from-env-pw")
        template = Template.objects.get(name=DEMO_TEMPLATE)
        assert template.assigned_groups.filter(name="employee").exists()
        # On the NAT network `desktops`, which the set-up itself does not start on this
        # machine's host (only `manage.py portal_setup` does; tests never start one here).
        assert list(template.networks.values_list("name", flat=True)) == ["desktops"]
        hypervisor = get_hypervisor(settings.LIBVIRT_URI)
        assert not hypervisor.list_network_names(prefix=name_prefix())
        assert Host.objects.get(name="local").last_check_ok
        assert setup_single_machine(env_passwords={}) == []
        assert Template.objects.count() == 1
    finally:  # the demo base has a random name: no later run would reuse it
        remove_imported_bases(get_hypervisor(settings.LIBVIRT_URI), settings.STORAGE_POOL_NAME)
