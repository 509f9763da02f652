"""Images: decide whether a golden image file is safe to become a template's base.

A qcow2 header can make QEMU open other files: a backing file, or an external data file
(OSSA-2024-001 / CVE-2024-32498: a desktop built on such an image reads and writes the named
file). Format probing is worse still: a VMDK descriptor names extent files, and a raw file
can carry any header. So:

- the qcow2 header is parsed here first, before any qemu-img runs, so a hostile image is
  refused without anything it names ever being opened;
- qemu-img always gets ``-f qcow2`` (never a probe) and must agree with the header;
- ``qemu-img check`` must find no corruption and no check errors. Leaked clusters are
  accepted: they are space nobody references, never guest data, and a base only ever
  sits read-only under the desktops' overlays, so leaks do not grow. They are counted
  (`ImageFacts.leaked_clusters`) and written to the audit trail.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from django.conf import settings

from vms.services.core.errors import ServiceError
from vms.settings_access import image_max_virtual_size_gib

GIB: Final = 1024**3
_MAGIC: Final = b"QFI\xfb"
# Header fields (big-endian), from qemu's docs/interop/qcow2.txt.
_V2_HEADER: Final = struct.Struct(">4sIQIIQI")  # magic .. crypt_method, 36 bytes
_V3_FEATURES: Final = struct.Struct(">QQQII")  # at 72: incompatible .. header_length
_INCOMPAT_CORRUPT: Final = 1 << 1
_INCOMPAT_DATA_FILE: Final = 1 << 2
_INCOMPAT_KNOWN: Final = 0b11111  # dirty, corrupt, data file, compression type, extended L2
_AUTOCLEAR_DATA_FILE_RAW: Final = 1 << 1
_EXT_DATA_FILE: Final = 0x44415441  # "DATA": the external data file's name
_HEADER_READ: Final = 64 * 1024  # header extensions live in the first cluster
_INFO_TIMEOUT_S: Final = 30
_CHECK_TIMEOUT_S: Final = 600  # reads every table of the image; large images take a while


class ImageRejected(ServiceError):
    """The image file is missing, outside the allowed folders, or not a safe qcow2."""


@dataclass(frozen=True)
class ImageFacts:
    """What the checks found out about an accepted image."""

    path: str
    format: str
    virtual_size: int
    leaked_clusters: int = 0


def image_inspect(*, path: str, shown: str = "") -> ImageFacts:
    """Check that `path` lies in an allowed import folder and is a self-contained qcow2:
    no backing chain, no external data file, not encrypted, not corrupt, not too big.

    `shown` names the image in messages (an upload's own file name), else `path` does.
    """
    shown = shown or path
    real = _allowed_path(path)
    if not real.is_file():
        raise ImageRejected(f"Image {shown} does not exist or is not a file.")
    size = _header_check(real, shown=shown)
    _info_check(real, shown=shown)
    leaks = _consistency_check(real, shown=shown)
    return ImageFacts(path=str(real), format="qcow2", virtual_size=size, leaked_clusters=leaks)


def _allowed_path(path: str) -> Path:
    # realpath: no symlink or ".." leads out, and the result is absolute, so qemu-img
    # never reads a "protocol:" prefix (nbd:, json:...) into it.
    real = Path(os.path.realpath(path))
    for folder in settings.IMAGE_IMPORT_DIRS:
        if real.is_relative_to(os.path.realpath(folder)):
            return real
    allowed = ", ".join(settings.IMAGE_IMPORT_DIRS)
    raise ImageRejected(f"Image {path} is outside the folders images may come from ({allowed}).")


# --- the header, read by us --------------------------------------------------------------


def _header_check(path: Path, *, shown: str) -> int:
    """Refuse what the qcow2 header alone shows; return the virtual size."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEADER_READ)
    except OSError as exc:
        raise ImageRejected(f"Image {shown} cannot be read: {exc.strerror}.") from exc
    if len(head) < 72 or head[:4] != _MAGIC:
        raise ImageRejected(
            f"Image {shown} is not a qcow2 image. Only qcow2 images are imported (a raw "
            f"disk converts with: qemu-img convert -f raw -O qcow2 disk.img disk.qcow2)."
        )
    _magic, version, backing_offset, _bsize, cluster_bits, size, crypt = _V2_HEADER.unpack_from(
        head
    )
    if version not in (2, 3) or (version == 3 and len(head) < 104):
        raise _unknown_refused(shown, version)
    incompatible, autoclear, extensions_at = 0, 0, 72
    if version == 3:
        incompatible, _compat, autoclear, _order, extensions_at = _V3_FEATURES.unpack_from(head, 72)
    if backing_offset:
        raise _backing_refused(shown)
    if crypt:
        raise _encrypted_refused(shown)
    if (
        incompatible & _INCOMPAT_DATA_FILE
        or autoclear & _AUTOCLEAR_DATA_FILE_RAW
        or _has_data_file_extension(head, start=extensions_at, end=1 << min(cluster_bits, 16))
    ):
        raise _data_file_refused(shown)
    if incompatible & _INCOMPAT_CORRUPT:
        raise ImageRejected(
            f"Image {shown} is marked corrupt by QEMU. Repair a copy with "
            f"qemu-img check -r all, or use another image."
        )
    if incompatible & ~_INCOMPAT_KNOWN:
        raise _unknown_refused(shown, version)
    _size_check(int(size), shown=shown)
    return int(size)


def _has_data_file_extension(head: bytes, *, start: int, end: int) -> bool:
    """Whether the header extensions (until the end marker) name an external data file."""
    offset, end = start, min(end, len(head))
    while offset + 8 <= end:
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            return False
        if kind == _EXT_DATA_FILE:
            return True
        offset += 8 + (length + 7) // 8 * 8
    return False


def _size_check(size: int, *, shown: str) -> None:
    limit = image_max_virtual_size_gib()
    if size > limit * GIB:
        raise ImageRejected(
            f"Image {shown} has a virtual size of {size / GIB:.4g} GiB, over the limit of "
            f"{limit} GiB (IMAGE_MAX_VIRTUAL_SIZE_GIB). Shrink the image, or raise the limit."
        )


def _unknown_refused(shown: str, version: int) -> ImageRejected:
    return ImageRejected(
        f"Image {shown} is a qcow2 (version {version}) with features this portal does not "
        f"know. Use an image made by this machine's qemu-img."
    )


def _backing_refused(shown: str) -> ImageRejected:
    return ImageRejected(
        f"Image {shown} has a backing file: it is an overlay on another image. "
        f"Import a standalone image (one without a backing file)."
    )


def _encrypted_refused(shown: str) -> ImageRejected:
    return ImageRejected(
        f"Image {shown} is encrypted; the portal cannot give QEMU its key. "
        f"Import an unencrypted image."
    )


def _data_file_refused(shown: str) -> ImageRejected:
    return ImageRejected(
        f"Image {shown} keeps its data in an external data file, and a desktop built on "
        f"it would read and write that file. Import an image that holds its own data."
    )


# --- qemu-img, always told the format ----------------------------------------------------


def _info_check(path: Path, *, shown: str) -> None:
    """qemu-img's own reading must agree: one image in the chain, nothing outside it."""
    chain = _qemu_img(["info", "-f", "qcow2", "--backing-chain", "--force-share"], path, shown)
    if not isinstance(chain, list) or len(chain) != 1:
        raise _backing_refused(shown)
    info = chain[0]
    specific = info.get("format-specific", {}).get("data", {})
    if info.get("format") != "qcow2":
        raise ImageRejected(f"Image {shown} is not a qcow2 image.")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise _backing_refused(shown)
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise _data_file_refused(shown)
    if info.get("encrypted") or specific.get("encrypt"):
        raise _encrypted_refused(shown)
    if specific.get("corrupt"):
        raise ImageRejected(f"Image {shown} is marked corrupt by QEMU; use another image.")
    _size_check(int(info.get("virtual-size", 0)), shown=shown)


def _consistency_check(path: Path, *, shown: str) -> int:
    """Run qemu-img check; refuse corruption and errors, return the leaked clusters."""
    report = _qemu_img(["check", "-f", "qcow2"], path, shown, ok_codes=(0, 2, 3))
    if not isinstance(report, dict):
        raise ImageRejected(f"qemu-img check gave no report for {shown}.")
    corruptions = int(report.get("corruptions", 0))
    errors = int(report.get("check-errors", 0))
    if corruptions or errors:
        raise ImageRejected(
            f"qemu-img check found {corruptions} corruptions and {errors} check errors in "
            f"{shown}. Repair a copy with qemu-img check -r all, or use another image."
        )
    return int(report.get("leaks", 0))


def _qemu_img(
    args: list[str], path: Path, shown: str, *, ok_codes: tuple[int, ...] = (0,)
) -> object:
    """Run `qemu-img <args> --output=json <path>` and parse its JSON."""
    command = ["qemu-img", *args, "--output=json", str(path)]
    timeout = _CHECK_TIMEOUT_S if args[0] == "check" else _INFO_TIMEOUT_S
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageRejected(f"Could not inspect {shown} with qemu-img {args[0]}: {exc}") from exc
    if done.returncode not in ok_codes:
        lines = done.stderr.strip().splitlines()
        raise ImageRejected(
            f"Image {shown} is not a readable qcow2 image: {lines[-1] if lines else 'unknown'}"
        )
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise ImageRejected(f"qemu-img {args[0]} gave no readable report for {shown}.") from exc
