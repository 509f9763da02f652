"""The portal's Redis is not an open one (issue 25, item 1): whoever can write to Redis can
forge a console ticket for anyone's desktop. With REDIS_URL unset, the portal uses its own
redis-server on 127.0.0.1:6380 (scripts/portal-redis, started by the set-up), with a
password the set-up generated; it refuses clients without it, and the password shows up in
no log and no command line. The machine's shared Redis (6379) is left as it is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

from portal import localredis
from tests.servers import ROOT


def _default_redis_url(**env: str) -> str:
    """settings.REDIS_URL as the portal computes it from this environment (REDIS_URL unset
    unless given)."""
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.REDIS_URL)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "DJANGO_SETTINGS_MODULE": "portal.settings", **env},
        check=True,
    )
    return done.stdout.strip()


def _raw(host: str, port: int, command: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as peer:
        peer.sendall(command)
        return peer.recv(200)


def test_the_portals_redis_refuses_an_unauthenticated_client() -> None:
    url = _default_redis_url()
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    assert parts.password, "the default REDIS_URL carries the set-up's generated password"
    assert len(parts.password) >= 32
    assert redis.Redis.from_url(url).ping() is True  # the portal itself gets in
    anonymous = redis.Redis(host=parts.hostname, port=parts.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("dp:console-ticket:forged", "x")
    wrong = redis.Redis(host=parts.hostname, port=parts.port, password="x" * 64)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    # What a desktop or a local process would send by hand: refused before any command runs.
    assert _raw(parts.hostname, parts.port, b"SET forged 1\r\n").startswith(b"-NOAUTH")
    assert _raw(parts.hostname, parts.port, b"KEYS *\r\n").startswith(b"-NOAUTH")


def test_the_password_file_is_the_set_ups_and_private() -> None:
    secret = localredis.redis_dir() / "password"
    assert secret.stat().st_mode & 0o077 == 0, "only its owner may read the password"
    assert (localredis.redis_dir() / "redis.conf").stat().st_mode & 0o077 == 0
    assert urlsplit(_default_redis_url()).password == secret.read_text().strip()


def test_an_explicit_redis_url_still_wins() -> None:
    assert _default_redis_url(REDIS_URL="redis://127.0.0.1:6379/14") == (
        "redis://127.0.0.1:6379/14"
    )


@pytest.mark.servers  # a Celery worker of its own
def test_the_password_is_in_no_log_and_no_command_line(tmp_path: Path) -> None:
    """A Celery worker on the portal's Redis: its banner names the broker with the password
    masked; the redis-server's command line does not carry it either."""
    url = localredis.url(db=13)
    secret = localredis.password()
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", "redis-auth-probe",
               "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-n", f"redis-auth-{os.getpid()}@%h", "--loglevel", "INFO"]  # fmt: skip
    env = {**os.environ, "REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    with log.open("wb") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the worker never said it was ready"
            time.sleep(0.2)  # polling its log, bounded by the deadline
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    text = log.read_text()
    assert "127.0.0.1:6380" in text  # the banner names the broker...
    assert secret not in text  # ...with the password masked
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert secret.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue  # a process that ended meanwhile
    redis.Redis.from_url(url).flushdb()  # the probe's queue bindings
