"""factory-boy factories: the one way tests (and the bench) build rows by hand."""

from __future__ import annotations

import factory

from vms.models import Desktop, DesktopStatus, Host


class DesktopFactory(factory.django.DjangoModelFactory):
    """A desktop row with no guest behind it: running on host 'fake' (if there is one),
    1 vCPU, 256 MiB, 1 GiB unless told. Pass `owner` and `template`."""

    class Meta:
        model = Desktop

    name = "desktop"
    status = DesktopStatus.RUNNING
    host = factory.LazyFunction(lambda: Host.objects.filter(name="fake").first())
    vcpus = 1
    memory_mib = 256
    disk_gib = 1
