"""The demo guest, booted as a real desktop through the portal, driven through the shell on
its serial console (tests/guestshell.py): its home is on the desktop's own disk, so a file
written there survives a stop and a start; and it has no network card on this machine's
own host (the network rule: guests that use a network run on lab hosts)."""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.fixtures import wait_for_status
from tests.guestshell import GuestShellError, guest_shell

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True)]


def test_a_file_in_root_survives_a_stop_and_a_start(
    celery_worker, api_for, employee, demo_template
) -> None:
    client = api_for(employee)
    launched = client.post("/api/desktops/", {"template": demo_template.pk}, format="json")
    assert launched.status_code == 202, launched.content
    desktop = wait_for_status(launched.json()["id"], "running")

    with guest_shell(settings.LIBVIRT_URI, desktop.domain_name) as shell:
        assert "/dev/vda2 /root ext4 rw" in shell.run("cat /proc/mounts")
        shell.run("echo kept-across-boots > /root/marker")
        assert shell.run("cat /root/marker") == "kept-across-boots\n"
        # Nothing with a network card boots here.
        assert shell.run("ls /sys/class/net") == "lo\n"
        with pytest.raises(GuestShellError, match="exited with 1"):
            shell.run("false")

    assert client.post(f"/api/desktops/{desktop.pk}/stop/").status_code == 202
    wait_for_status(desktop.pk, "stopped")
    assert client.post(f"/api/desktops/{desktop.pk}/start/").status_code == 202
    wait_for_status(desktop.pk, "running")

    with guest_shell(settings.LIBVIRT_URI, desktop.domain_name) as shell:
        assert shell.run("cat /root/marker") == "kept-across-boots\n"

    assert client.delete(f"/api/desktops/{desktop.pk}/").status_code == 202
    wait_for_status(desktop.pk, "deleted")
