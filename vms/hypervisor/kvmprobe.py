"""Does hardware acceleration (KVM) really run ordinary guests on this machine?

``/dev/kvm`` existing, or libvirt listing ``kvm`` in its domain capabilities, is not proof.
On the development machines ``/dev/kvm`` is provided by *kvm-pvm* (a software "KVM" for
hosts without VT-x/AMD-V): it runs real-mode code, so SeaBIOS even prints its banner, but it
cannot switch an ordinary guest to protected mode, and a Linux guest stops with
"KVM internal error ... emulation failure" in its boot loader.

The probe therefore boots QEMU with a 64 KiB "BIOS" that, from the reset vector, switches to
32-bit protected mode and executes an ``iretd`` (the instructions that fail under kvm-pvm),
then does ``mov al,0x31; out 0xf4,al; hlt``. The ``isa-debug-exit`` device turns that write
into QEMU exit status ``(0x31 << 1) | 1 == 99``; any other outcome (error, hang until the
timeout) means KVM is not usable. On a working host the probe takes about 0.1 s.

Before running QEMU, ``/proc/cpuinfo`` is checked for the ``vmx`` (Intel) or ``svm`` (AMD)
flag: hardware KVM needs one of them, and skipping the probe saves its 5 s timeout on hosts
like the development machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Final

__all__ = ["PROBE_EXIT_STATUS", "cpu_has_virtualization", "probe_firmware", "run_kvm_probe"]

PROBE_EXIT_STATUS: Final = 99
_SIZE: Final = 64 * 1024
_RESET_VECTOR: Final = 0xFFF0
# At the reset vector (real mode, CS base 0xFFFF0000): ljmp 0xF000:0x0000. The image is also
# mapped at 0xF0000, so this lands on _MAIN at image offset 0.
_RESET_CODE: Final = bytes.fromhex("ea000000f0")
# Assembled with GNU as (--32), image offset 0 = linear 0xF0000:
#   .code16
#   00 fa                  cli
#   01 b8 00 f0            mov ax, 0xf000
#   04 8e d8               mov ds, ax
#   06 66 0f 01 16 50 00   lgdt dword [0x50]          ; gdt_desc
#   0c 0f 20 c0            mov eax, cr0
#   0f 0c 01               or al, 1                   ; PE
#   11 0f 22 c0            mov cr0, eax
#   14 66 ea 1c 00 0f 00 08 00   jmp dword 0x08:0xf001c
#   .code32
#   1c 66 b8 10 00         mov ax, 0x10
#   20 8e d8               mov ds, ax
#   22 8e d0               mov ss, ax
#   24 bc 00 70 00 00      mov esp, 0x7000
#   29 9c                  pushfd
#   2a 6a 08               push 0x08
#   2c 68 32 00 0f 00      push 0xf0032
#   31 cf                  iretd
#   32 b0 31               mov al, 0x31
#   34 e6 f4               out 0xf4, al
#   36 f4                  hlt
#   38 GDT: null, flat 32-bit code (0x08), flat data (0x10); 50 gdt_desc: limit 23, base 0xf0038
_MAIN: Final = bytes.fromhex(
    "fab800f08ed8660f011650000f20c00c010f22c066ea1c000f000800"
    "66b810008ed88ed0bc007000009c6a086832000f00cfb031e6f4f490"
    "0000000000000000ffff0000009acf00ffff00000092cf00"
    "170038000f00"
)


def probe_firmware() -> bytes:
    """The 64 KiB probe image (``hlt`` = 0xF4 wherever no code is)."""
    image = bytearray([0xF4]) * _SIZE
    image[: len(_MAIN)] = _MAIN
    image[_RESET_VECTOR : _RESET_VECTOR + len(_RESET_CODE)] = _RESET_CODE
    return bytes(image)


def cpu_has_virtualization(cpuinfo_path: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU flags include ``vmx`` or ``svm``; None if they cannot be read."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"vmx", "svm"})
    except OSError:
        return None
    return None


def run_kvm_probe(
    *,
    qemu_binary: str = "qemu-system-x86_64",
    accel: str = "kvm",
    timeout_s: float = 5.0,
    check_cpu_flags: bool = True,
) -> bool:
    """True only if QEMU with ``-accel <accel>`` runs the probe and exits with status 99.

    Runs QEMU as the calling user, which therefore needs read/write access to ``/dev/kvm``.
    """
    if accel == "kvm" and check_cpu_flags and cpu_has_virtualization() is False:
        return False
    binary = shutil.which(qemu_binary)
    if binary is None:
        return False
    fd, path = tempfile.mkstemp(prefix="kvmprobe-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(probe_firmware())
        cmd = [
            binary,
            "-accel",
            accel,
            "-display",
            "none",
            "-nodefaults",
            "-m",
            "16",
            "-bios",
            path,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout_s,
                check=False,
            )
        except (subprocess.TimeoutExpired, OSError):
            return False
        return result.returncode == PROBE_EXIT_STATUS
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
