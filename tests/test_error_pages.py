"""Error pages and logging out, as a person meets them: every refusal is a page in the
portal's own style with a way back (never an empty body or a stack trace), the API keeps its
JSON errors, and a GET of /logout/ asks before anything happens."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import include, path

from tests.factories import DesktopFactory

pytestmark = pytest.mark.django_db

WAY_BACK = '<a class="button" href="/">Back to the portal</a>'


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret detail that must not reach the user")


# A URLconf for the 500 test only: the portal's routes plus a view that fails.
urlpatterns = [path("boom/", _boom), path("", include("portal.urls"))]


def _client(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_unknown_page_is_the_portals_404(employee) -> None:
    response = _client(employee).get("/no/such/page/")
    assert response.status_code == 404
    assert "This page does not exist" in response.content.decode()
    assert WAY_BACK in response.content.decode()


def test_another_users_console_is_the_same_404(employee, other_employee, fake_template) -> None:
    desktop = DesktopFactory(owner=other_employee, template=fake_template)
    response = _client(employee).get(f"/desktops/{desktop.pk}/console/")
    assert response.status_code == 404
    assert "This page does not exist" in response.content.decode()


def test_refused_page_says_why(employee) -> None:
    response = _client(employee).get("/helpdesk/")
    assert response.status_code == 403
    body = response.content.decode()
    assert "This page is for help-desk staff." in body and WAY_BACK in body


def test_wrong_method_on_a_page_is_a_page_not_an_empty_405(employee) -> None:
    response = _client(employee).get("/desktops/launch/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "not meant to be opened directly" in response.content.decode()


def test_wrong_method_on_the_api_stays_json(employee) -> None:
    response = _client(employee).put("/api/desktops/")
    assert response.status_code == 405
    assert response["Content-Type"].startswith("application/json")


@pytest.mark.urls(__name__)
def test_server_error_is_the_portals_500_without_details(employee) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(employee)
    response = client.get("/boom/")
    assert response.status_code == 500
    body = response.content.decode()
    assert "Something went wrong on our side" in body and WAY_BACK in body
    assert "secret detail" not in body and "Traceback" not in body


def test_expired_form_says_so(employee) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(employee)
    response = client.post("/logout/")
    assert response.status_code == 403
    assert "This form has expired" in response.content.decode()
    assert client.get("/").status_code == 200  # still logged in


def test_get_of_logout_asks_and_keeps_the_user_logged_in(employee) -> None:
    client = _client(employee)
    response = client.get("/logout/")
    assert response.status_code == 200
    assert "Log out?" in response.content.decode()
    assert client.get("/").status_code == 200


def test_logging_out_confirms_it(employee) -> None:
    client = _client(employee)
    response = client.post("/logout/")
    assert response.status_code == 200
    assert "You are logged out" in response.content.decode()
    assert client.get("/").status_code == 302  # to the login page


def test_logout_page_when_not_logged_in_goes_to_login() -> None:
    response = Client().get("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"


def test_every_page_has_a_skip_link(employee) -> None:
    body = _client(employee).get("/").content.decode()
    assert '<a class="skip-link" href="#main">Skip to content</a>' in body
    assert '<main id="main" tabindex="-1">' in body
