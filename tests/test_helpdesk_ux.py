"""The help-desk side and the owner's notice, without a browser: where a login lands, the
search's filters and their validation, bounded queries, and the owner's End button (its
permissions, CSRF, audit rows and what the relays are told)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.fixtures import UserFactory, make_desktop
from vms.models import AuditEvent, ConsoleSession, DesktopStatus
from vms.selectors import console_watchers, helpdesk_search
from vms.services.consoles import CLOSE_ENDED_BY_OWNER, console_session_keep

pytestmark = pytest.mark.django_db


def _client(user: Any, **kwargs: Any) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def _login(username: str, next_url: str | None = None) -> str:
    """Log in through the real form; return where the browser is sent."""
    client = Client()
    url = "/login/" + (f"?next={next_url}" if next_url else "")
    response = client.post(url, {"username": username, "password": "pw-for-tests"})
    assert response.status_code == 302, response.content[:500]
    target = response["Location"]
    if target == reverse("home"):
        target = client.get(target)["Location"]
    return str(target)


# --- 1. where a login lands ------------------------------------------------------------------


def test_helpdesk_lands_on_the_help_desk_everyone_else_on_their_desktops(
    helpdesk_user, employee, admin_user_
) -> None:
    assert _login(helpdesk_user.username) == "/helpdesk/"
    assert _login(employee.username) == "/"
    assert _login(admin_user_.username) == "/"  # admins keep their dashboard
    # An explicit next wins over the role's landing page.
    assert _login(helpdesk_user.username, next_url="/") == "/"
    # ...but never leads off the site.
    assert _login(helpdesk_user.username, next_url="https://evil.example/") == "/helpdesk/"
    # Help-desk staff can still open their own desktops' page.
    assert _client(helpdesk_user).get("/").status_code == 200


def test_home_needs_a_login() -> None:
    response = Client().get("/home/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- 2. the search: filters, validation, bounded queries -------------------------------------


@pytest.fixture
def people(employee, other_employee, helpdesk_user, admin_user_, fake_template) -> dict[str, Any]:
    """employee1 with two desktops, employee2 with none (one deleted), helper with one."""
    make_desktop(employee, fake_template, name="alpha")
    make_desktop(employee, fake_template, name="beta", status=DesktopStatus.STOPPED)
    make_desktop(other_employee, fake_template, name="gone", status=DesktopStatus.DELETED)
    make_desktop(helpdesk_user, fake_template, name="helpers-own")
    return {"employee": employee, "other": other_employee, "helper": helpdesk_user}


def _found(**filters: Any) -> list[str]:
    return [person.username for person, _ in helpdesk_search(query="", **filters)]


def test_filters_narrow_the_search(people, admin_user_) -> None:
    everyone = ["boss", "employee1", "employee2", "helper"]
    assert _found() == everyone
    assert _found(employees_only=True) == ["employee1", "employee2"]
    assert _found(with_desktops_only=True) == ["employee1", "helper"]  # deleted ones do not count
    assert _found(employees_only=True, with_desktops_only=True) == ["employee1"]


def test_search_results_are_one_table_grouped_by_user_with_filters_kept(people) -> None:
    page = _client(people["helper"]).get("/helpdesk/", {"q": "employee", "employees": "1"})
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count("<table") == 1
    assert html.count('<tbody data-user="') == 2  # employee1 and employee2
    assert html.count("data-desktop=") == 2  # alpha and beta, one row each
    assert 'rowspan="2"' in html  # employee1's name spans their two desktops
    assert "No desktops." in html  # employee2's row says so
    assert 'name="employees" value="1" checked' in html
    assert 'name="with_desktops" value="1">' in html  # not checked


def test_filters_alone_list_whom_they_let_through(people) -> None:
    page = _client(people["helper"]).get("/helpdesk/", {"with_desktops": "1"})
    html = page.content.decode()
    assert '<tbody data-user="employee1">' in html and '<tbody data-user="helper">' in html
    assert '<tbody data-user="employee2">' not in html
    blank = _client(people["helper"]).get("/helpdesk/")
    assert "<table" not in blank.content.decode()  # nothing asked, nothing listed


@pytest.mark.parametrize(
    "params",
    [
        {"employees": "yes"},
        {"with_desktops": "2"},
        {"employees": ["1", "1"]},
        {"employees": "\x00"},
    ],
)
def test_bad_filter_values_get_a_clear_message(people, params) -> None:
    page = _client(people["helper"]).get("/helpdesk/", {"q": "employee", **params})
    html = page.content.decode()
    assert page.status_code == 400
    assert "takes the value 1 (on) or nothing; the search was not run." in html
    assert "<table" not in html
    assert 'value="employee"' in html  # the query is kept for the next try


def test_no_match_with_filters_says_so(people) -> None:
    page = _client(people["helper"]).get("/helpdesk/", {"q": "helper", "employees": "1"})
    assert "No user matches “helper” with these filters." in page.content.decode()


def test_helpdesk_search_is_three_queries_however_many_match(people, fake_template) -> None:
    with CaptureQueriesContext(connection) as few:
        helpdesk_search(query="", with_desktops_only=True, employees_only=True)
    for n in range(8):
        person = UserFactory(username=f"crowd{n}")
        for m in range(3):
            make_desktop(person, fake_template, name=f"c{n}-{m}")
    with CaptureQueriesContext(connection) as many:
        results = helpdesk_search(query="", with_desktops_only=True, employees_only=True)
    assert sum(len(desktops) for _, desktops in results) == 2 + 24
    assert len(few) == len(many) == 3  # users, desktops, their interfaces


def test_helpdesk_page_queries_do_not_grow_with_results(people, fake_template) -> None:
    helper = _client(people["helper"])

    def render() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            page = helper.get("/helpdesk/", {"q": "e", "with_desktops": "1"})
        assert page.status_code == 200
        return page.content.count(b"data-desktop="), len(queries)

    rows_few, queries_few = render()
    for n in range(6):
        person = UserFactory(username=f"member{n}")
        for m in range(4):
            make_desktop(person, fake_template, name=f"m{n}-{m}")
    rows_many, queries_many = render()
    assert (rows_few, rows_many) == (3, 27)  # employee1 (2), helper (1), then 24 more
    assert queries_many == queries_few


# --- 3. the owner's notice and its End button ------------------------------------------------


@pytest.fixture
def desktop(employee, fake_template) -> Any:
    return make_desktop(employee, fake_template, name="office")


@pytest.fixture
def takeover(desktop, helpdesk_user) -> ConsoleSession:
    session: ConsoleSession = ConsoleSession.objects.create(
        desktop=desktop, user=helpdesk_user, mode="full", reason="ticket #1234", relay="channels"
    )
    return session


def test_the_notice_says_who_how_why_and_since_when(desktop, takeover, helpdesk_user) -> None:
    [entry] = console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)]
    assert entry == {
        "session": takeover.pk,
        "user": helpdesk_user.username,
        "mode": "full",
        "reason": "ticket #1234",
        "since": takeover.started_at.isoformat(),
    }
    page = _client(desktop.owner).get("/").content.decode()
    assert "<strong>helper</strong> (help desk) is in control of office" in page
    assert "Reason: “ticket #1234”" in page
    assert f'<time datetime="{takeover.started_at.isoformat()}">' in page
    assert f'name="session" value="{takeover.pk}"' in page
    console = _client(desktop.owner).get(f"/desktops/{desktop.pk}/console/").content.decode()
    assert 'id="watchers"' in console and "Reason: “ticket #1234”" in console


def _end(client: Client, desktop: Any, session: Any, **extra: Any) -> Any:
    url = reverse("console-session-end", kwargs={"pk": desktop.pk})
    return client.post(url, {"session": session.pk, "next": "/"}, **extra)


def test_the_owner_ends_a_help_desk_session(
    desktop, takeover, helpdesk_user, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _end(_client(desktop.owner), desktop, takeover)
    assert response.status_code == 302 and response["Location"] == "/"
    takeover.refresh_from_db()
    assert takeover.ended_at is not None
    assert takeover.close_reason == "ended by the desktop's owner"
    ended = AuditEvent.objects.get(action="console.end")
    assert (ended.actor, ended.desktop) == (desktop.owner, desktop)
    assert ended.detail == {"session": takeover.pk, "user": "helper", "mode": "full"}
    assert AuditEvent.objects.filter(action="console.close", actor=helpdesk_user).exists()
    assert len(callbacks) >= 2  # the owner's pages are told, and so is the relay
    assert console_watchers(desktop_ids=[desktop.pk])[str(desktop.pk)] == []
    # A relay that missed the message closes at its next re-check, with the same code.
    closing = console_session_keep(session_id=takeover.pk, relay="gateway")
    assert closing is not None and closing.code == CLOSE_ENDED_BY_OWNER == 4460
    # Ending it again says so instead of failing.
    again = _end(_client(desktop.owner), desktop, takeover, HTTP_ACCEPT="application/json")
    assert again.status_code == 409
    assert again.json() == {"detail": "That console session had already ended."}


def test_the_relays_late_tally_of_an_ended_session_is_audited(desktop, takeover) -> None:
    from vms.services.consoles import console_session_close

    _end(_client(desktop.owner), desktop, takeover)
    assert not console_session_close(session_id=takeover.pk, reason="x", bytes_from_guest=512)
    tally = AuditEvent.objects.get(action="console.tally")
    assert tally.detail["bytes_from_guest"] == 512


def test_only_the_owner_or_an_admin_may_end_it(
    desktop, takeover, other_employee, helpdesk_user, admin_user_, fake_template
) -> None:
    for stranger in (other_employee, helpdesk_user):
        assert _end(_client(stranger), desktop, takeover).status_code == 404
    anonymous = _end(Client(), desktop, takeover)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/")
    # The session must be on the desktop named in the URL.
    elsewhere = make_desktop(desktop.owner, fake_template, name="other")
    assert _end(_client(desktop.owner), elsewhere, takeover).status_code == 404
    url = reverse("console-session-end", kwargs={"pk": desktop.pk})
    owner = _client(desktop.owner)
    for bad in ("", "abc", "-1", "9" * 30):
        assert owner.post(url, {"session": bad}).status_code == 404, bad
    assert owner.get(url).status_code == 405
    takeover.refresh_from_db()
    assert takeover.ended_at is None
    answer = _end(_client(admin_user_), desktop, takeover, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200
    takeover.refresh_from_db()
    assert takeover.close_reason == "ended by an admin"


def test_the_owners_own_sessions_are_not_theirs_to_end(desktop) -> None:
    own = ConsoleSession.objects.create(desktop=desktop, user=desktop.owner, mode="full")
    assert _end(_client(desktop.owner), desktop, own).status_code == 404


def test_a_spice_file_session_can_be_ended_from_the_portal(desktop, helpdesk_user) -> None:
    # The SPICE proxy carries remote-viewer now: it drops the set at its next re-check
    # (tests/relay/test_spice_proxy.py), and refuses the file from then on.
    spice = ConsoleSession.objects.create(
        desktop=desktop, user=helpdesk_user, mode="full", reason="r", relay="spice-file"
    )
    answer = _end(_client(desktop.owner), desktop, spice, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200
    spice.refresh_from_db()
    assert spice.close_reason == "ended by the desktop's owner"


def test_ending_needs_the_csrf_token(desktop, takeover) -> None:
    strict = _client(desktop.owner, enforce_csrf_checks=True)
    assert _end(strict, desktop, takeover).status_code == 403
    takeover.refresh_from_db()
    assert takeover.ended_at is None
