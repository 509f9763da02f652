"""Fault injection against the real services: worker processes of our own (which we may
SIGKILL), a private Redis (which we may stop), libvirtd restarts and a tmpfs storage pool.

Nothing here stops a process it did not start. The one exception is libvirtd, which the
libvirtd test restarts on purpose (by the pid in its pid file, see support.py) and always
leaves running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from tests.relay.conftest import channels_relay  # noqa: F401 - a fixture for these tests
from tests.servers import dies_with_parent, free_port, server_env, var_path
from vms.models import Host

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """A Celery worker process of our own (prefork, one pool process) on given queues."""

    def __init__(self, *, queues: str, tag: str, concurrency: int = 1) -> None:
        self.queues = queues
        self.name = f"faults-{tag}-{os.getpid()}@localhost"
        self.concurrency = concurrency
        self.log_path = var_path(f"test-worker-{tag}.log")
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> Worker:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                "--without-gossip",
                "--without-mingle",
                "-n",
                self.name,
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_parent,
        )
        log.close()
        return self

    def wait_ready(self) -> Worker:
        from portal.celery import app

        assert self.process is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"worker exited; see {self.log_path}"
            if app.control.ping(destination=[self.name], timeout=0.5):
                return self
        raise AssertionError(f"worker {self.name} did not answer within 60 s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pool_children(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool), as the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def faulty_host(local_host: Host, demo_template: Any) -> Host:
    """Host 'faulty' on the real libvirtd and the test pool; its queue `host.faulty` is
    consumed only by workers a test starts itself. The shared host 'local' is disabled, so
    launches land here."""
    redis.Redis.from_url(settings.REDIS_URL).delete("host.faulty")  # from an earlier run
    Host.objects.filter(pk=local_host.pk).update(enabled=False)
    return Host.objects.create(
        name="faulty", uri=local_host.uri, storage_pool=local_host.storage_pool
    )


@pytest.fixture
def start_worker(django_db_setup: None) -> Iterator[Any]:
    """Start workers of our own on the faulty host's queue; all are stopped afterwards."""
    workers: list[Worker] = []

    def start(tag: str = "faulty", queues: str = "host.faulty", concurrency: int = 1) -> Worker:
        worker = Worker(queues=queues, tag=tag, concurrency=concurrency).spawn()
        workers.append(worker)
        return worker.wait_ready()

    yield start
    for worker in workers:
        worker.stop()


# --- a private Redis ----------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own, on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
