"""The admin as admins meet it, through Django's test client against the real admin views:
quota forms that say what is wrong in words, hosts whose capacity comes from the host,
the desktop list and pages, bulk actions that ask first."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from tests.fixtures import UserFactory, make_desktop
from vms.admin.quotas import BOTH, NEITHER
from vms.hypervisor import HostCapacity
from vms.models import Desktop, DesktopStatus, Host, Quota
from vms.services.core.errors import ServiceError
from vms.services.fleet.hosts import host_capacity_read, host_ensure_local

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


# --- hosts -----------------------------------------------------------------------------------

# libvirt's test driver (in-process, no daemon) reports 16 CPUs, 3072 MiB and a 100 GiB pool.
TEST_DRIVER = {"uri": "test:///default", "storage_pool": "default-pool"}
NOBODY_LISTENS = "qemu+ssh://127.0.0.1:1/system"  # refused at once, on loopback
HOST_FORM = {"name": "hv2", "enabled": "on"}


def test_capacity_is_read_from_the_host_through_the_seam() -> None:
    found = host_capacity_read(uri="test:///default", pool="default-pool")
    assert found == HostCapacity(cpus=16, memory_mib=3072, pool_gib=100)
    assert host_capacity_read(uri="test:///default", pool="no-such-pool").pool_gib is None
    with pytest.raises(ServiceError, match=r"Could not read the host's capacity: .*refused"):
        host_capacity_read(uri=NOBODY_LISTENS, pool="desktops")


@pytest.mark.libvirt
def test_the_local_host_is_registered_with_what_it_has(settings: Any) -> None:
    """First run: host 'local' gets this machine's CPUs and memory, not the model's 16
    vCPUs and 16 GiB."""
    settings.LIBVIRT_URI = "qemu:///system"
    host = host_ensure_local()
    nodeinfo = subprocess.run(
        ["virsh", "-c", "qemu:///system", "nodeinfo"], capture_output=True, text=True, check=True
    ).stdout
    cpus = int(_field(nodeinfo, r"CPU\(s\):\s+(\d+)"))
    memory_mib = int(_field(nodeinfo, r"Memory size:\s+(\d+) KiB")) // 1024
    assert host.capacity_vcpus == cpus == os.cpu_count()
    # A ballooned machine's memory moves a little between two readings.
    assert abs(host.capacity_memory_mib - memory_mib) < memory_mib * 0.2


def _field(text: str, pattern: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return found[1]


def test_a_new_host_with_empty_capacity_takes_what_the_host_has(admin_client_: Client) -> None:
    page = admin_client_.post("/admin/vms/host/add/", {**HOST_FORM, **TEST_DRIVER}, follow=True)
    assert page.redirect_chain, page.content.decode()[:3000]
    host = Host.objects.get(name="hv2")
    assert (host.capacity_vcpus, host.capacity_memory_mib, host.capacity_disk_gib) == (
        16,
        3072,
        100,
    )
    assert "Checked against the host: 16 CPUs, 3072 MiB of memory, pool" in page.content.decode()


def test_a_new_host_cannot_claim_more_than_it_has(admin_client_: Client) -> None:
    claimed = {"capacity_vcpus": "64", "capacity_memory_mib": "16384", "capacity_disk_gib": "50"}
    page = admin_client_.post("/admin/vms/host/add/", {**HOST_FORM, **TEST_DRIVER, **claimed})
    assert page.status_code == 200
    text = page.content.decode()
    assert "The host has 16 CPUs; enter 16 or less." in text
    assert "The host has 3072 MiB of memory; enter 3072 or less." in text
    assert not Host.objects.filter(name="hv2").exists()


def test_a_host_that_cannot_be_reached_is_said_so(admin_client_: Client) -> None:
    page = admin_client_.post(
        "/admin/vms/host/add/", {**HOST_FORM, "uri": NOBODY_LISTENS, "storage_pool": "desktops"}
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert "Could not read the host&#x27;s capacity" in text and "Connection refused" in text
    assert "enter the host&#x27;s vCPUs, memory and disk by hand" in text
    assert not Host.objects.filter(name="hv2").exists()

    by_hand = {"capacity_vcpus": "8", "capacity_memory_mib": "8192", "capacity_disk_gib": "100"}
    page = admin_client_.post(
        "/admin/vms/host/add/",
        {**HOST_FORM, "uri": NOBODY_LISTENS, "storage_pool": "desktops", **by_hand},
        follow=True,
    )
    assert "The capacity you entered was saved unchecked." in page.content.decode()
    assert Host.objects.get(name="hv2").capacity_vcpus == 8


def test_the_add_form_fills_in_the_capacity_it_reads(admin_client_: Client) -> None:
    page = admin_client_.post(
        "/admin/vms/host/add/", {**HOST_FORM, **TEST_DRIVER, "_read_capacity": "1"}, follow=True
    )
    text = page.content.decode()
    assert (
        "Read from the host: 16 CPUs, 3072 MiB of memory, pool &#x27;default-pool&#x27; 100 GiB."
        in text
    )
    form = page.context["adminform"].form
    assert form["capacity_vcpus"].value() == "16"
    assert form["capacity_memory_mib"].value() == "3072"
    assert form["name"].value() == "hv2" and form["uri"].value() == "test:///default"
    assert not Host.objects.filter(name="hv2").exists()  # nothing saved yet


def test_host_list_shows_capacity_as_bars_with_figures(
    admin_client_: Client, employee: Any, fake_template: Any
) -> None:
    make_desktop(employee, fake_template, vcpus=2, memory_mib=1024)
    make_desktop(employee, fake_template, status=DesktopStatus.DELETED, vcpus=8)  # not counted
    listing = admin_client_.get("/admin/vms/host/").content.decode()
    assert '<meter min="0" max="16" low="11.2" high="14.4" optimum="0" value="2"' in listing
    assert "2 / 16 </span>" in listing
    assert "1024 / 16384 MiB" in listing


# --- desktops --------------------------------------------------------------------------------


@pytest.fixture
def desktops(employee: Any, fake_template: Any) -> dict[str, Desktop]:
    return {
        status: make_desktop(employee, fake_template, name=f"{status}-desk", status=status)
        for status in (DesktopStatus.RUNNING, DesktopStatus.STOPPED, DesktopStatus.DELETED)
    }


def test_deleted_desktops_are_hidden_until_asked_for(
    admin_client_: Client, desktops: dict[str, Desktop]
) -> None:
    def listed(query: str) -> set[str]:
        page = admin_client_.get(f"/admin/vms/desktop/{query}")
        return {desktop.name for desktop in page.context["cl"].result_list}

    assert listed("") == {"running-desk", "stopped-desk"}
    assert listed("?status=every") == {"running-desk", "stopped-desk", "deleted-desk"}
    assert listed("?status=deleted") == {"deleted-desk"}
    page = admin_client_.get("/admin/vms/desktop/").content.decode()
    assert "All but deleted" in page and "All, deleted included" in page


def test_desktop_page_shows_screen_console_and_actions_and_no_save(
    admin_client_: Client, desktops: dict[str, Desktop]
) -> None:
    running = desktops[DesktopStatus.RUNNING]
    Desktop.objects.filter(pk=running.pk).update(thumbnail_at=timezone.now())
    text = admin_client_.get(f"/admin/vms/desktop/{running.pk}/change/").content.decode()
    assert f'src="/desktops/{running.pk}/thumbnail.png?at=' in text
    assert f'href="/desktops/{running.pk}/console/"' in text
    for action in ("stop", "force-stop", "reboot", "delete"):
        assert f'action="/desktops/{running.pk}/{action}/"' in text, action
    assert f'action="/desktops/{running.pk}/start/"' not in text  # not while it runs
    assert 'data-confirm="Delete running-desk? Its disk is removed for good."' in text
    assert 'name="_save"' not in text and 'name="_continue"' not in text

    stopped = desktops[DesktopStatus.STOPPED]
    text = admin_client_.get(f"/admin/vms/desktop/{stopped.pk}/change/").content.decode()
    assert f'action="/desktops/{stopped.pk}/start/"' in text
    assert "console/" not in text and "No screenshot: the desktop is stopped." in text


def test_a_page_button_runs_the_action_and_comes_back(
    admin_client_: Client, desktops: dict[str, Desktop], django_capture_on_commit_callbacks: Any
) -> None:
    running = desktops[DesktopStatus.RUNNING]
    here = f"/admin/vms/desktop/{running.pk}/change/"
    with django_capture_on_commit_callbacks(execute=False):
        answer = admin_client_.post(f"/desktops/{running.pk}/stop/", {"next": here})
    assert answer.status_code == 302 and answer["Location"] == here
    running.refresh_from_db()
    assert running.status == DesktopStatus.STOPPING


def test_the_list_has_row_buttons_for_what_each_state_allows(
    admin_client_: Client, desktops: dict[str, Desktop]
) -> None:
    text = admin_client_.get("/admin/vms/desktop/?q=desk").content.decode()
    running, stopped = desktops[DesktopStatus.RUNNING], desktops[DesktopStatus.STOPPED]
    assert (
        f'formaction="/desktops/{running.pk}/stop/" name="next" value="/admin/vms/desktop/?q=desk"'
        in text
    )
    assert f'formaction="/desktops/{stopped.pk}/start/"' in text
    assert f'formaction="/desktops/{stopped.pk}/stop/"' not in text
    assert "/delete/" not in text  # deleting is asked on the desktop's own page


def test_bulk_actions_come_from_the_action_table(admin_client_: Client, desktops: Any) -> None:
    text = admin_client_.get("/admin/vms/desktop/").content.decode()
    for value, label in (
        ("bulk_start", "Start the selected desktops"),
        ("bulk_stop", "Stop the selected desktops"),
        ("bulk_reboot", "Reboot the selected desktops"),
    ):
        assert f'<option value="{value}">{label}</option>' in text


def test_bulk_stop_asks_first_listing_the_desktops(
    admin_client_: Client, desktops: dict[str, Desktop], django_capture_on_commit_callbacks: Any
) -> None:
    running, stopped = desktops[DesktopStatus.RUNNING], desktops[DesktopStatus.STOPPED]
    chosen = {"action": "bulk_stop", "_selected_action": [running.pk, stopped.pk]}
    page = admin_client_.post("/admin/vms/desktop/", {**chosen, "index": "0"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "<h1>Stop 2 desktops?</h1>" in text
    assert "running-desk" in text and "stopped-desk" in text
    assert "Skipped: it is stopped" in text
    assert 'value="Yes, stop 1 desktop"' in text
    running.refresh_from_db()
    assert running.status == DesktopStatus.RUNNING  # nothing happened yet

    with django_capture_on_commit_callbacks(execute=False):
        done = admin_client_.post("/admin/vms/desktop/", {**chosen, "post": "yes"}, follow=True)
    running.refresh_from_db()
    assert running.status == DesktopStatus.STOPPING
    text = done.content.decode()
    assert "Stop requested for 1 desktop." in text
    assert (
        "Stop skipped for stopped-desk: The desktop is stopped; stop is not possible now." in text
    )


def test_bulk_start_runs_at_once(
    admin_client_: Client, desktops: dict[str, Desktop], django_capture_on_commit_callbacks: Any
) -> None:
    stopped = desktops[DesktopStatus.STOPPED]
    with django_capture_on_commit_callbacks(execute=False):
        answer = admin_client_.post(
            "/admin/vms/desktop/",
            {"action": "bulk_start", "_selected_action": [stopped.pk], "index": "0"},
        )
    assert answer.status_code == 302
    stopped.refresh_from_db()
    assert stopped.status == DesktopStatus.STARTING


def test_host_list_shows_state_load_and_puts_hosts_in_maintenance(
    admin_client_: Client, employee: Any, fake_template: Any, fake_host: Host
) -> None:
    make_desktop(employee, fake_template, status=DesktopStatus.STOPPED)
    Host.objects.filter(pk=fake_host.pk).update(
        load_memory_mib=3072, load_available_memory_mib=2048, load_running_guests=1,
        load_cpu_percent=37.5,
    )  # fmt: skip
    listing = admin_client_.get("/admin/vms/host/").content.decode()
    assert "Up, 1 desktop<" in listing
    assert "CPU 37.5 %, 2048 of 3072 MiB free, 1 running" in listing
    form = {"action": "maintenance_on", "_selected_action": [str(fake_host.pk)]}
    page = admin_client_.post("/admin/vms/host/", form, follow=True).content.decode()
    assert "In maintenance, its desktops moving away: fake." in page
    assert "Maintenance: draining, 1 left" in page
    assert Host.objects.get(pk=fake_host.pk).maintenance
    again = admin_client_.post("/admin/vms/host/", form, follow=True).content.decode()
    assert "Nothing changed" in again


def test_overcommit_is_optional_and_checked_on_the_form(admin_client_: Client) -> None:
    page = admin_client_.post("/admin/vms/host/add/", {**HOST_FORM, **TEST_DRIVER}, follow=True)
    assert page.redirect_chain
    assert Host.objects.get(name="hv2").cpu_overcommit == 1.0
    bad = {**HOST_FORM, **TEST_DRIVER, "name": "hv3", "cpu_overcommit": "99"}
    page = admin_client_.post("/admin/vms/host/add/", bad)
    assert page.status_code == 200 and "less than or equal to 16" in page.content.decode()
