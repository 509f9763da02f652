"""The KVM probe's pieces that need no QEMU."""

from __future__ import annotations

from pathlib import Path

from vms.hypervisor.kvmprobe import cpu_has_virtualization, probe_firmware


def test_probe_firmware_layout() -> None:
    image = probe_firmware()
    assert len(image) == 64 * 1024
    assert image[0xFFF0:0xFFF5] == bytes.fromhex("ea000000f0")  # ljmp f000:0000
    assert image[0] == 0xFA  # cli
    assert bytes.fromhex("b031e6f4f4") in image  # mov al,0x31; out 0xf4,al; hlt
    assert image[-1] == 0xF4


def test_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu vme svm sse\n")
    assert cpu_has_virtualization(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu vme hypervisor sse\n")
    assert cpu_has_virtualization(str(info)) is False
    assert cpu_has_virtualization(str(tmp_path / "missing")) is None
