"""The console page's server side: what it renders for a desktop that is not running, and
the state read its live feed falls back on (same permissions as the page)."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.fixtures import make_desktop
from vms.models import DesktopStatus

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_stopped_desktop_page_offers_start_and_returns_to_the_console(
    employee, fake_template
) -> None:
    desktop = make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    url = f"/desktops/{desktop.pk}/console/"
    page = _client(employee).get(url).content.decode()
    assert f"<title>Console · {desktop.name} · Desktop portal</title>" in page
    assert "This desktop is stopped." in page
    assert f'action="/desktops/{desktop.pk}/start/"' in page
    assert f'name="next" value="{url}"' in page
    # Only Start: the other actions belong to the dashboard, not next to the screen.
    assert f"/desktops/{desktop.pk}/stop/" not in page
    assert f"/desktops/{desktop.pk}/delete/" not in page


def test_the_start_button_is_hidden_while_the_desktop_runs(employee, fake_template) -> None:
    desktop = make_desktop(employee, fake_template, status=DesktopStatus.RUNNING)
    page = _client(employee).get(f"/desktops/{desktop.pk}/console/").content.decode()
    assert 'id="desktop-offline" class="screen-offline" hidden' in page
    assert 'data-action="start" hidden' in page


def test_console_state_answers_like_the_live_feed(
    employee, other_employee, helpdesk_user, fake_template
) -> None:
    desktop = make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    url = f"/desktops/{desktop.pk}/console/state/"
    body = _client(employee).get(url).json()
    assert body["id"] == str(desktop.pk)
    assert (body["status"], body["status_label"]) == ("stopped", "Stopped")
    assert "start" in body["actions"]
    assert _client(helpdesk_user).get(url).status_code == 200
    assert _client(other_employee).get(url).status_code == 404
    assert Client().get(url).status_code == 302  # to the login page
    assert _client(employee).post(url).status_code == 405
