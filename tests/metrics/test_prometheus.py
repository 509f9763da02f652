"""GET /metrics: protected (bearer token compared in constant time; loopback only when no
token is set), labelled by desktop id and host only, valid for `promtool check metrics`,
and scraped by a real Prometheus server on loopback that then answers the desktop series."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from tests.fixtures import make_desktop
from tests.metrics.helpers import record, stats_for
from tests.servers import daphne_command, free_port, running

TOKEN = "t" * 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def measured(fake_host, fake_template, employee):
    desktop = make_desktop(employee, fake_template, domain_name="dpm-prom", name="Ann's payroll")
    now = timezone.now()
    record(fake_host, now - timezone.timedelta(seconds=15), stats_for(desktop, cpu_s=1))
    record(fake_host, now, stats_for(desktop, cpu_s=4, net_rx_bytes=1500, net_rx_packets=1))
    return desktop


def scrape(**headers: str) -> Any:
    return Client(REMOTE_ADDR=headers.pop("remote", "127.0.0.1")).get("/metrics", **headers)


@pytest.mark.django_db
def test_without_a_token_only_loopback_is_answered(measured):
    assert scrape().status_code == 200
    refused = scrape(remote="10.1.2.3")
    assert refused.status_code == 403
    assert b"portal_desktop" not in refused.content


# What a TLS proxy on this machine sends: it connects from loopback for every client.
FORWARDED = {
    "X-Forwarded-For from afar": {"HTTP_X_FORWARDED_FOR": "203.0.113.5"},
    "X-Forwarded-For naming loopback": {"HTTP_X_FORWARDED_FOR": "127.0.0.1"},
    "Forwarded": {"HTTP_FORWARDED": "for=203.0.113.5;proto=https"},
    "X-Real-IP": {"HTTP_X_REAL_IP": "203.0.113.5"},
    "X-Forwarded-Host": {"HTTP_X_FORWARDED_HOST": "desk.example.com"},
    "X-Forwarded-Proto only": {"HTTP_X_FORWARDED_PROTO": "https"},  # PORTAL_TLS's header
    "Via": {"HTTP_VIA": "1.1 proxy"},
}


@pytest.mark.django_db
@pytest.mark.parametrize("headers", FORWARDED.values(), ids=FORWARDED)
def test_a_request_through_an_untrusted_proxy_is_not_loopback(measured, headers):
    """TRUSTED_PROXIES empty (the default): a proxied request fails closed."""
    refused = scrape(**headers)
    assert refused.status_code == 403
    assert b"portal_desktop" not in refused.content


TRUSTED_LOOPBACK = [ip_network("127.0.0.1/32")]


@pytest.mark.django_db
@override_settings(TRUSTED_PROXIES=TRUSTED_LOOPBACK)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"HTTP_X_FORWARDED_FOR": "127.0.0.1"}, 200),  # a scrape on this machine, proxied
        ({"HTTP_X_FORWARDED_FOR": "203.0.113.5"}, 403),
        ({"HTTP_X_FORWARDED_FOR": "127.0.0.1, 203.0.113.5"}, 403),  # the client's own entry
        ({"HTTP_X_FORWARDED_FOR": "not-an-address"}, 403),
        ({"HTTP_X_REAL_IP": "127.0.0.1"}, 403),  # only X-Forwarded-For is read
        ({"HTTP_FORWARDED": "for=127.0.0.1"}, 403),
    ],
)
def test_a_trusted_proxy_is_believed_only_about_x_forwarded_for(measured, headers, status):
    assert scrape(**headers).status_code == status


@pytest.mark.django_db
@override_settings(TRUSTED_PROXIES=[ip_network("10.9.0.0/16")])
def test_a_proxy_elsewhere_is_trusted_and_a_stranger_behind_it_is_refused(measured):
    assert scrape(remote="10.9.0.7", HTTP_X_FORWARDED_FOR="::1").status_code == 200
    assert scrape(remote="10.9.0.7", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 403
    assert scrape(remote="10.1.2.3", HTTP_X_FORWARDED_FOR="127.0.0.1").status_code == 403


def _deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "SECRET_KEY": "k" * 20 + "Qz8#vT2!pL9@xW4$" + "m" * 30,
            "ALLOWED_HOSTS": "portal.example.com",
            "METRICS_TOKEN": "",
            **env,
        },
    )


def test_the_deploy_check_warns_of_tls_without_a_metrics_token():
    warned = _deploy_check(PORTAL_TLS="true")
    assert "vms.W001" in warned.stderr + warned.stdout
    assert "METRICS_TOKEN" in warned.stderr + warned.stdout
    quiet = _deploy_check(PORTAL_TLS="true", METRICS_TOKEN=TOKEN)
    assert "vms.W001" not in quiet.stderr + quiet.stdout
    without_tls = _deploy_check(PORTAL_TLS="false")
    assert "vms.W001" not in without_tls.stderr + without_tls.stdout


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN)
def test_with_a_token_it_is_required_even_on_loopback(measured):
    assert scrape().status_code == 403
    assert scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN[:-1]}x").status_code == 403
    assert scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", remote="10.1.2.3").status_code == 200


@pytest.mark.django_db
def test_series_name_desktops_and_hosts_only_and_pass_promtool(measured, employee):
    body = scrape().content.decode()
    labels = f'desktop="{measured.pk}",host="fake"'
    assert f"portal_desktop_cpu_percent{{{labels}}} 20.0" in body
    assert f"portal_desktop_network_received_bytes_total{{{labels}}} 1500.0" in body
    assert 'portal_host_running_desktops{host="fake"} 1.0' in body
    assert "django_http_requests_total_by_method_total" in body  # django-prometheus
    assert employee.username not in body and measured.name not in body
    check = subprocess.run(["promtool", "check", "metrics"], input=body.encode(),
                           capture_output=True, timeout=30)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


@contextmanager
def prometheus_scraping(target_port: int) -> Iterator[str]:
    """A real Prometheus server on a free loopback port scraping the portal every second
    (with the token); stopped and its data removed when the block ends. Yields its URL."""
    work = Path(tempfile.mkdtemp(prefix="dpm-prometheus-"))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{
            "job_name": "portal",
            "authorization": {"type": "Bearer", "credentials": TOKEN},
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
        }],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    command = ["prometheus", f"--config.file={work / 'prometheus.yml'}",
               f"--storage.tsdb.path={work / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    log = open(work / "prometheus.log", "wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=5) as answer:  # noqa: S310 - loopback
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
        return result


def wait_for_series(url: str, promql: str, *, timeout: float = 60) -> list[dict[str, Any]]:
    """Poll the server until the query answers (it must start, scrape, and store)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = query(url, promql)
        except OSError:  # not listening yet
            found = []
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never returned {promql}")


@pytest.mark.servers  # daphne and prometheus
@pytest.mark.django_db(transaction=True)
def test_a_real_prometheus_scrape_returns_the_desktop_series(measured):
    port = free_port()
    with (
        running(daphne_command(port), port=port, log_name="test-metrics-daphne.log",
                METRICS_TOKEN=TOKEN, ALLOWED_HOSTS="127.0.0.1"),
        prometheus_scraping(port) as url,
    ):  # fmt: skip
        found = wait_for_series(url, "portal_desktop_cpu_percent")
        assert found[0]["metric"]["desktop"] == str(measured.pk)
        assert found[0]["metric"]["host"] == "fake"
        assert float(found[0]["value"][1]) == 20.0
        up = query(url, 'up{job="portal"}')
        assert up and up[0]["value"][1] == "1"
