"""The admin as admins meet it, through Django's test client against the real admin views:
quota forms that say what is wrong in words, hosts whose capacity comes from the host,
the desktop list and pages, bulk actions that ask first."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.fixtures import UserFactory
from vms.admin.quotas import BOTH, NEITHER
from vms.models import Quota

pytestmark = pytest.mark.django_db

QUOTA_FORM = {"max_desktops": "3", "max_vcpus": "4", "max_memory_mib": "4096", "max_disk_gib": "40"}


@pytest.fixture
def admin_client_(admin_user_: Any) -> Client:
    client = Client()
    client.force_login(admin_user_)
    return client


@pytest.fixture
def alice() -> Any:
    return UserFactory(username="alice")


@pytest.fixture
def staff_group() -> Group:
    return Group.objects.create(name="staff")


# --- quotas ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("whom", "message"),
    [("both", BOTH), ("neither", NEITHER)],
)
def test_quota_form_says_the_one_of_the_two_rule_in_words(
    admin_client_: Client, alice: Any, staff_group: Group, whom: str, message: str
) -> None:
    chosen = {"user": alice.pk, "group": staff_group.pk} if whom == "both" else {}
    page = admin_client_.post("/admin/vms/quota/add/", {**QUOTA_FORM, **chosen})
    assert page.status_code == 200  # the form again
    text = page.content.decode()
    assert message in text
    assert 'class="errorlist nonfield"' in text
    assert "Constraint" not in text and "quota_for_exactly_one" not in text
    assert not Quota.objects.exists()


def test_quota_list_says_whom_each_quota_applies_to(
    admin_client_: Client, alice: Any, staff_group: Group
) -> None:
    assert (
        admin_client_.post("/admin/vms/quota/add/", {**QUOTA_FORM, "user": alice.pk}).status_code
        == 302
    )
    assert (
        admin_client_.post(
            "/admin/vms/quota/add/", {**QUOTA_FORM, "group": staff_group.pk}
        ).status_code
        == 302
    )
    listing = admin_client_.get("/admin/vms/quota/").content.decode()
    assert ">Applies to<" in listing
    assert ">User alice<" in listing and ">Group staff<" in listing


def test_quota_form_picks_users_and_groups_by_name(
    admin_client_: Client, alice: Any, staff_group: Group
) -> None:
    form = admin_client_.get("/admin/vms/quota/add/").content.decode()
    assert form.count("admin-autocomplete") >= 2  # both pickers are autocompletes
    for field, term, wanted in (("user", "ali", "alice"), ("group", "sta", "staff")):
        found = admin_client_.get(
            "/admin/autocomplete/",
            {"app_label": "vms", "model_name": "quota", "field_name": field, "term": term},
        )
        assert found.status_code == 200
        assert [hit["text"] for hit in found.json()["results"]] == [wanted]
