"""Redis (the Celery broker and the Channels layer) stops and comes back.

The test runs its own redis-server and points this process at it, so the machine's shared
Redis is never touched. While it is down, pages render, and launch and power actions answer
503 with a clear message and change nothing; when it is back, everything works again in
the same process, without a restart: tasks are queued and live updates are pushed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import AuditEvent, Desktop, DesktopStatus, Quota
from vms.services.desktops.events import user_group

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE_DOWN = "The task queue is unavailable right now; nothing was changed. Try again shortly."


@pytest.fixture
def redis_settings(private_redis, settings):
    """Broker, broker check and channel layer of this process on the private Redis."""
    settings.REDIS_URL = private_redis.url
    settings.CELERY_BROKER_URL = private_redis.url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [private_redis.url]},
        }
    }
    return private_redis


async def _receive(layer: Any, channel: str) -> dict[str, Any]:
    return dict(await asyncio.wait_for(layer.receive(channel), 10))


def queued(server, queue: str) -> int:
    return int(redis.Redis.from_url(server.url).llen(queue))


def test_redis_down_refuses_actions_renders_pages_and_recovers(
    redis_settings, api_for, employee, fake_template, fake_host
) -> None:
    server = redis_settings
    Quota.objects.create(user=employee, max_desktops=10)
    api = api_for(employee)
    page = Client()
    page.force_login(employee)

    launched = api.post("/api/desktops/", {"template": fake_template.pk}, format="json")
    assert launched.status_code == 202, launched.content
    assert queued(server, fake_host.queue_name) == 1  # the task went to this Redis
    running = make_desktop(
        employee, fake_template, host=fake_host, name="Still-listed-while-Redis-is-down"
    )
    stopped = make_desktop(
        employee, fake_template, host=fake_host, name="off", status=DesktopStatus.STOPPED
    )

    server.stop()
    desktops_before = Desktop.objects.count()
    events_before = AuditEvent.objects.count()
    began = time.monotonic()
    refusals = [
        api.post("/api/desktops/", {"template": fake_template.pk}, format="json"),
        api.post(f"/api/desktops/{running.pk}/stop/"),
        api.post(f"/api/desktops/{running.pk}/force-stop/"),
        api.post(f"/api/desktops/{running.pk}/reboot/"),
        api.post(f"/api/desktops/{stopped.pk}/start/"),
        api.delete(f"/api/desktops/{stopped.pk}/"),
    ]
    for response in refusals:
        assert response.status_code == 503, response.content
        assert response.json()["detail"] == QUEUE_DOWN
    console = api.post(f"/api/desktops/{running.pk}/console/", {}, format="json")
    assert console.status_code == 503, console.content
    assert "Consoles are unavailable" in console.json()["detail"]
    assert time.monotonic() - began < 10, "refusals must be quick, not hang on the broker"
    assert Desktop.objects.count() == desktops_before
    assert AuditEvent.objects.count() == events_before
    assert Desktop.objects.get(pk=running.pk).status == DesktopStatus.RUNNING
    assert Desktop.objects.get(pk=stopped.pk).status == DesktopStatus.STOPPED

    # Pages read the database only: they still render, and the forms say what happened.
    dashboard = page.get("/")
    assert dashboard.status_code == 200
    assert b"Still-listed-while-Redis-is-down" in dashboard.content
    assert page.get(f"/desktops/{running.pk}/console/").status_code == 200
    assert api.get("/api/desktops/").status_code == 200
    launched_by_form = page.post("/desktops/launch/", {"template": fake_template.pk}, follow=True)
    assert launched_by_form.status_code == 200
    assert QUEUE_DOWN.encode() in launched_by_form.content
    assert Desktop.objects.count() == desktops_before

    server.start()  # same port, empty: as after a Redis restart without persistence
    layer = get_channel_layer()
    page_channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(user_group(employee.pk), page_channel)
    again = api.post("/api/desktops/", {"template": fake_template.pk}, format="json")
    assert again.status_code == 202, again.content
    pushed = async_to_sync(_receive)(layer, page_channel)  # live updates work again too
    assert pushed["type"] == "desktop.changed"
    assert pushed["desktop"]["id"] == again.json()["id"]
    assert api.post(f"/api/desktops/{running.pk}/stop/").status_code == 202
    assert queued(server, fake_host.queue_name) == 2
    assert Desktop.objects.get(pk=running.pk).status == DesktopStatus.STOPPING
