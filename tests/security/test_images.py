"""Hostile golden images (issue 10): what template import refuses, built with the real
qemu-img, and base volumes that templates never share or lose while desktops use them."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.fixtures import make_desktop
from vms.hypervisor import HypervisorError
from vms.models import Host, Template
from vms.services.catalog.images import ImageRejected, image_inspect
from vms.services.catalog.templates import template_import
from vms.services.fleet.reconcile import reconcile_host

pytestmark = pytest.mark.django_db

MIB = 1024**2


def qemu_img(*args: str | Path) -> None:
    done = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, f"qemu-img {' '.join(map(str, args))}: {done.stderr}"


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def qcow2(path: Path, size: str = "64M", *options: str) -> Path:
    """A fresh qcow2 made by qemu-img; `options` go to -o (comma-joined)."""
    extra = ["-o", ",".join(options)] if options else []
    qemu_img("create", "-q", "-f", "qcow2", *extra, path, size)
    return path


def _pattern(folder: Path) -> Path:
    """1 MiB of data: a qcow2 converted from it is bigger than an empty one."""
    raw = folder / "pattern.raw"
    raw.write_bytes(b"\x55" * MIB)
    return raw


def poke_refcount(path: Path, *, cluster: int, refcount: int) -> None:
    """Write one entry of the first refcount block (16-bit refcounts, qemu-img's default)."""
    with path.open("r+b") as fh:
        header = fh.read(104)
        (table,) = struct.unpack(">Q", header[48:56])
        fh.seek(table)
        (block,) = struct.unpack(">Q", fh.read(8))
        fh.seek(block + 2 * cluster)
        fh.write(struct.pack(">H", refcount))


@pytest.fixture
def images(tmp_path: Path, settings: Any) -> Path:
    """The only folder images may be imported from, for this test."""
    folder = tmp_path / "images"
    folder.mkdir()
    settings.IMAGE_IMPORT_DIRS = [str(folder)]
    return folder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the import folders that hostile images aim at."""
    path = tmp_path / "elsewhere" / "payroll.raw"
    path.parent.mkdir()
    path.write_bytes(b"salaries\n".ljust(MIB, b"\0"))
    return path


def base_volumes(hypervisor: Any, host: Host) -> set[str]:
    return {v.name for v in hypervisor.list_volumes(pool=host.storage_pool, prefix="base-")}


# --- finding 1: images that reach outside themselves -----------------------------------------


def _created_with_data_file(images: Path, secret: Path) -> Path:
    return qcow2(images / "x.qcow2", "1M", f"data_file={secret}")


def _amended_to_data_file(images: Path, secret: Path) -> Path:
    # An innocent-looking data file first, then `qemu-img amend` points it elsewhere.
    harmless = images / "harmless.raw"
    harmless.write_bytes(b"\0" * MIB)
    image = qcow2(images / "x.qcow2", "1M", f"data_file={harmless}")
    qemu_img("amend", "-f", "qcow2", "-o", f"data_file={secret}", image)
    return image


def _raw_data_file(images: Path, secret: Path) -> Path:
    return qcow2(images / "x.qcow2", "1M", f"data_file={secret}", "data_file_raw=on")


def _missing_data_file(images: Path, secret: Path) -> Path:
    gone = images / "gone.raw"
    image = qcow2(images / "x.qcow2", "1M", f"data_file={gone}")
    gone.unlink()
    return image


@pytest.mark.parametrize(
    "build",
    [_created_with_data_file, _amended_to_data_file, _raw_data_file, _missing_data_file],
)
def test_a_qcow2_with_an_external_data_file_is_refused(images, secret, build) -> None:
    image = build(images, secret)
    before = sha256(secret)
    with pytest.raises(ImageRejected, match="external data file") as refused:
        image_inspect(path=str(image))
    assert "Traceback" not in refused.value.message
    assert sha256(secret) == before


def test_an_image_whose_data_file_is_a_fifo_is_refused_without_opening_it(images, tmp_path) -> None:
    # A FIFO blocks whoever opens it: a quick refusal shows the header alone decided.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    harmless = images / "harmless.raw"
    harmless.write_bytes(b"\0" * MIB)
    image = qcow2(images / "x.qcow2", "1M", f"data_file={harmless}")
    qemu_img("amend", "-f", "qcow2", "-o", f"data_file={fifo}", image)
    started = time.monotonic()
    with pytest.raises(ImageRejected, match="external data file"):
        image_inspect(path=str(image))
    assert time.monotonic() - started < 5


def test_another_format_is_refused_without_being_probed(images, tmp_path) -> None:
    # A VMDK descriptor names its extent file; probing it would open that file (a FIFO here,
    # which would hang qemu-img). Only the qcow2 magic is looked at, never qemu's probe.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    vmdk = images / "disk.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", vmdk, "1M")
    (images / "disk-flat.vmdk").unlink()
    vmdk.write_text(vmdk.read_text().replace('"disk-flat.vmdk"', f'"{fifo}"'))
    raw = images / "raw.img"
    raw.write_bytes(b"\0" * MIB)
    for path in (vmdk, raw):
        started = time.monotonic()
        with pytest.raises(ImageRejected, match="is not a qcow2 image"):
            image_inspect(path=str(path))
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("backing_format", ["qcow2", "raw"])
def test_an_image_with_a_backing_chain_is_refused(images, secret, backing_format) -> None:
    backing = secret if backing_format == "raw" else qcow2(images / "base.qcow2", "1M")
    overlay = images / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, overlay)
    with pytest.raises(ImageRejected, match="backing file"):
        image_inspect(path=str(overlay))


def test_an_encrypted_image_is_refused(images) -> None:
    image = images / "locked.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=pw",
              # A short key-derivation time (the test needs no strong key): the default
              # is 2 s of CPU benchmark, which failed once on a loaded CI machine.
              "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100",
              str(image), "1M"]  # fmt: skip
    # qemu-img's PBKDF benchmark itself can fail under load ("Unable to get accurate CPU
    # usage", QEMU's crypto/pbkdf.c): that is the tool's measurement, not the portal's
    # behaviour under test, so it is tried again; any other failure fails at once.
    for _ in range(3):
        done = subprocess.run(create, capture_output=True, text=True)
        if done.returncode == 0 or "accurate CPU usage" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr
    with pytest.raises(ImageRejected, match="encrypted"):
        image_inspect(path=str(image))


def test_a_corrupt_image_is_refused(images) -> None:
    image = images / "broken.qcow2"
    qemu_img("convert", "-O", "qcow2", "-f", "raw", _pattern(images), image)
    for cluster in range(3):  # header, L1 and refcount table now claim nobody owns them
        poke_refcount(image, cluster=cluster, refcount=0)
    with pytest.raises(ImageRejected, match=r"qemu-img check found 3 corruptions"):
        image_inspect(path=str(image))


def test_an_image_marked_corrupt_is_refused(images) -> None:
    image = qcow2(images / "marked.qcow2", "1M")
    with image.open("r+b") as fh:  # incompatible feature bit 1: "corrupt"
        fh.seek(72)
        fh.write(struct.pack(">Q", 1 << 1))
    with pytest.raises(ImageRejected, match="marked corrupt"):
        image_inspect(path=str(image))


def test_leaked_clusters_are_accepted_and_counted(images) -> None:
    # Leaks are clusters nobody references: wasted space, never guest data. Accepted.
    image = qcow2(images / "leaky.qcow2", "4M")
    with image.open("r+b") as fh:
        fh.truncate(30 * 65536)
    poke_refcount(image, cluster=25, refcount=1)
    facts = image_inspect(path=str(image))
    assert facts.leaked_clusters == 1
    assert facts.virtual_size == 4 * MIB


def test_virtual_size_is_limited(images, settings) -> None:
    assert settings.IMAGE_MAX_VIRTUAL_SIZE_GIB == 200
    with pytest.raises(ImageRejected, match=r"300 GiB.*limit of 200 GiB"):
        image_inspect(path=str(qcow2(images / "huge.qcow2", "300G")))
    settings.IMAGE_MAX_VIRTUAL_SIZE_GIB = 1
    assert image_inspect(path=str(qcow2(images / "one.qcow2", "1G"))).virtual_size == 1024**3
    with pytest.raises(ImageRejected, match="IMAGE_MAX_VIRTUAL_SIZE_GIB"):
        image_inspect(path=str(qcow2(images / "two.qcow2", "1025M")))


def _form_errors(response: Any) -> str:
    """What the admin's add page said was wrong (its error notes and lists)."""
    html = response.content.decode()
    found = re.findall(r'class="(?:errornote|errorlist)[^"]*"[^>]*>(.*?)</(?:p|ul)>', html, re.S)
    return " | ".join(re.sub(r"<[^>]+>", " ", item).strip() for item in found) or html[:2000]


def _admin_post(admin: Any, **image: Any) -> Any:
    client = Client()
    client.force_login(admin)
    form = {
        "name": "Hostile",
        "vcpus": 1,
        "memory_mib": 128,
        "disk_gib": 1,
        "console_type": "vnc",
        "enabled": "on",
        "persistent": "on",
        "image_path": "",
        # The page's inline forms (networks, versions), empty, as a browser sends them.
        **{f"{inline}-{count}": 0 for inline in ("templatenetwork_set", "versions")
           for count in ("TOTAL_FORMS", "INITIAL_FORMS")},
        **image,
    }  # fmt: skip
    return client.post("/admin/vms/template/add/", form)


@pytest.mark.libvirt
@pytest.mark.parametrize("how", ["upload", "path"])
def test_admin_refuses_a_hostile_image_on_the_form_and_leaves_nothing(
    admin_user_, local_host, hypervisor, images, secret, how
) -> None:
    hostile = _created_with_data_file(images, secret)
    bases = base_volumes(hypervisor, local_host)
    if how == "upload":
        upload = SimpleUploadedFile("win.qcow2", hostile.read_bytes())
        hostile.unlink()
        response = _admin_post(admin_user_, image_upload=upload)
    else:
        response = _admin_post(admin_user_, image_path=str(hostile))
    assert response.status_code == 200  # the form again, with the reason
    errors = response.context["adminform"].form.non_field_errors()
    assert len(errors) == 1 and "external data file" in errors[0], errors
    assert "Traceback" not in response.content.decode()
    assert not Template.objects.filter(name="Hostile").exists()
    assert base_volumes(hypervisor, local_host) == bases
    assert not (images / "uploads").exists() or not any((images / "uploads").iterdir())


@pytest.mark.libvirt
def test_admin_upload_of_a_sound_image_imports_it_and_keeps_no_copy(
    admin_user_, local_host, hypervisor, images
) -> None:
    upload = SimpleUploadedFile("tiny.qcow2", qcow2(images / "tiny.qcow2", "64M").read_bytes())
    response = _admin_post(admin_user_, name="Sound", image_upload=upload)
    assert response.status_code == 302, _form_errors(response)
    template = Template.objects.get(name="Sound")
    assert os.path.basename(template.base_image_path) in base_volumes(hypervisor, local_host)
    assert not any((images / "uploads").iterdir())


# --- finding 8: one base volume per template, never lost while desktops use it ---------------


@pytest.mark.libvirt
def test_templates_whose_names_look_alike_get_their_own_base(local_host, employee, images) -> None:
    # (local_host removes the bases the test imported.)
    first = template_import(
        name="Win 11", image_path=str(qcow2(images / "a.qcow2", "64M")), memory_mib=128
    )
    make_desktop(employee, first, host=local_host)
    before = sha256(first.base_image_path)
    other = images / "b.qcow2"  # another image, another file size
    qemu_img("convert", "-f", "raw", "-O", "qcow2", _pattern(images), other)
    second = template_import(name="win-11", image_path=str(other), memory_mib=128)
    assert second.base_image_path != first.base_image_path
    assert sha256(first.base_image_path) == before  # its desktops keep their image
    assert os.path.basename(second.base_image_path).startswith("base-win-11-")


@pytest.mark.libvirt
def test_a_base_that_desktop_disks_use_is_never_replaced(
    local_host, hypervisor, images, settings
) -> None:
    pool = local_host.storage_pool
    name = f"{settings.NAME_PREFIX}base-{uuid.uuid4().hex[:6]}.qcow2"
    base = hypervisor.import_base_volume(
        pool=pool, name=name, source_path=str(qcow2(images / "a.qcow2", "64M"))
    )
    disk = hypervisor.clone_volume(
        pool=pool,
        name=f"{settings.NAME_PREFIX}{uuid.uuid4().hex[:6]}.qcow2",
        base_path=base.path,
        capacity_bytes=base.capacity_bytes,
    )
    before = sha256(base.path)
    # A volume of that name whose size differs looks like an interrupted upload, which
    # import_base_volume would delete and upload again: not while a disk is built on it.
    other = images / "b.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", _pattern(images), other)  # bigger file
    with pytest.raises(HypervisorError, match="desktop disk") as refused:
        hypervisor.import_base_volume(pool=pool, name=name, source_path=str(other))
    assert refused.value.permanent
    assert disk.name in refused.value.message
    assert sha256(base.path) == before


@pytest.mark.libvirt
def test_reconcile_never_removes_a_template_base(
    local_host, hypervisor, employee, images, settings
) -> None:
    image = qcow2(images / "office.qcow2", "64M")
    template = template_import(name="Office", image_path=str(image), memory_mib=128)
    make_desktop(employee, template, host=local_host, status="stopped")
    base = os.path.basename(template.base_image_path)
    # A prefix that base names happen to start with: bases are still not orphans.
    settings.NAME_PREFIX = "base-"
    report = reconcile_host(host=local_host)
    assert base not in report.removed_volumes
    assert base in base_volumes(hypervisor, local_host)


@pytest.mark.libvirt
def test_an_import_that_fails_on_one_host_leaves_no_base_on_the_others(
    local_host, hypervisor, images
) -> None:
    Host.objects.create(name="second", uri=local_host.uri, storage_pool="dpt-no-such-pool")
    before = base_volumes(hypervisor, local_host)
    with pytest.raises(ImageRejected, match="Host second could not take the image"):
        template_import(name="Half", image_path=str(qcow2(images / "a.qcow2")), memory_mib=128)
    assert base_volumes(hypervisor, local_host) == before
    assert not Template.objects.filter(name="Half").exists()
