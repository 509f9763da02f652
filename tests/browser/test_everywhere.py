"""What every page shares, in Chromium: the skip link, the error pages in the portal's own
style with a way back (desktop and phone), and logging out that asks and then confirms."""

from __future__ import annotations

import pytest

from tests.browser.conftest import SHOTS, logged_in_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_skip_link_appears_on_tab_and_moves_focus_to_the_content(
    browser, portal_url, employee
) -> None:
    page = logged_in_page(browser, portal_url, employee.username)
    link = page.get_by_role("link", name="Skip to content")
    assert link.bounding_box()["y"] < 0  # off screen until focused
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert link.bounding_box()["y"] >= 0
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.context.close()


def test_not_found_page_has_the_portal_style_and_a_way_back(browser, portal_url, employee) -> None:
    page = logged_in_page(browser, portal_url, employee.username)
    response = page.goto(f"{portal_url}/desktops/00000000-0000-0000-0000-000000000000/console/")
    assert response is not None and response.status == 404
    assert page.get_by_role("heading", name="This page does not exist").is_visible()
    page.screenshot(path=str(SHOTS / "error-404.png"), full_page=True)
    page.get_by_role("link", name="Back to the portal").click()
    page.wait_for_url(f"{portal_url}/")
    page.context.close()


def test_error_page_fits_a_phone(browser, portal_url, employee) -> None:
    page = logged_in_page(
        browser,
        portal_url,
        employee.username,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
    )
    response = page.goto(f"{portal_url}/desktops/launch/")  # a GET of a form's target
    assert response is not None and response.status == 405
    assert page.get_by_role("heading", name="not meant to be opened directly").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SHOTS / "error-405-phone.png"), full_page=True)
    page.context.close()


def test_logout_link_asks_then_logs_out_and_says_so(browser, portal_url, employee) -> None:
    page = logged_in_page(browser, portal_url, employee.username)
    page.goto(f"{portal_url}/logout/")  # e.g. a bookmarked or typed address
    assert page.get_by_role("heading", name="Log out?").is_visible()
    page.get_by_role("link", name="Stay logged in").click()
    page.wait_for_url(f"{portal_url}/")

    page.get_by_role("button", name="Log out").click()  # the top bar's button
    assert page.get_by_role("heading", name="You are logged out").is_visible()
    page.screenshot(path=str(SHOTS / "logged-out.png"), full_page=True)
    page.goto(f"{portal_url}/")
    page.wait_for_url(f"{portal_url}/login/?next=/")
    page.context.close()
