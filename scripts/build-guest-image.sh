#!/usr/bin/env bash
# Build the Desktop Portal demo/test guest: a bootable 1 GiB qcow2 disk image with
# an MBR and two partitions, with no internet access other than the Debian package
# mirror:
#   1. a 64 MiB FAT file system with syslinux -> Debian's cloud kernel + busybox initramfs;
#   2. an empty ext4 file system (label "home") that the guest mounts on /root, so
#      that what a user writes there is on the desktop's own disk: it survives a
#      reboot, and snapshots and backups see it.
# The qcow2 is sparse: about 10 MiB on disk.
#
# Usage: scripts/build-guest-image.sh [--force] OUT.qcow2
#
# Environment:
#   GUEST_CACHE_DIR  where downloaded .debs are kept between builds
#                    (default /var/cache/desktop-portal/guest)
#
# The required tools are installed by the project's set-up, not here:
#   apt-get install -y --no-install-recommends qemu-utils syslinux \
#       syslinux-common mtools dosfstools cpio e2fsprogs fdisk
#
# The image is rebuilt when the guest's files or this script change: a stamp
# beside it (OUT.stamp) records their hash.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GUEST_DIR="$REPO_DIR/guest"
CACHE_DIR=${GUEST_CACHE_DIR:-/var/cache/desktop-portal/guest}
# The layout, in 512-byte sectors: partition 1 (boot, FAT) from 1 MiB, 64 MiB long;
# partition 2 (home, ext4) from 65 MiB to the end of the 1 GiB disk.
DISK_SECTORS=2097152
BOOT_START=2048
BOOT_SECTORS=131072
HOME_START=$((BOOT_START + BOOT_SECTORS))
HOME_SECTORS=$((DISK_SECTORS - HOME_START))
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin

# Loaded in this order by guest/init. Missing ones that are built into the
# kernel are skipped; any other missing one is an error.
# (The Debian kernel package has no modules.dep: each module's `depends=` in its
# .modinfo section is what orders this list.)
MODULES=(
    virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_blk
    failover net_failover virtio_net           # eth0.. (on desktops with a network)
    crc16 mbcache crc32c_generic jbd2 ext4     # /root on the disk's second partition
    button    # ACPI power button -> input device
    evdev     # /dev/input/event*, read by busybox acpid
)
GUEST_FILES=(init inittab profile acpi-power syslinux.cfg udhcpc.script net-up)

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
    echo "usage: $PROG [--force] OUT.qcow2" >&2
    exit 2
}

FORCE=0
OUT=
while [ $# -gt 0 ]; do
    case $1 in
        --force|-f) FORCE=1 ;;
        -h|--help) usage ;;
        -*) echo "$PROG: unknown option: $1" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || usage

# --- tools ------------------------------------------------------------------
missing=()
for tool in apt-get apt-cache dpkg-deb tar cpio gzip mkfs.vfat syslinux mcopy qemu-img mkfs.ext4 sfdisk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "missing tools: ${missing[*]} (Debian packages: apt, dpkg, cpio, gzip," \
        "dosfstools, syslinux + syslinux-common, mtools, qemu-utils, e2fsprogs, fdisk)"
fi
[ -f "$SYSLINUX_MBR" ] || die "missing $SYSLINUX_MBR (Debian package syslinux-common)"
for f in "${GUEST_FILES[@]}"; do
    [ -f "$GUEST_DIR/$f" ] || die "missing guest file $GUEST_DIR/$f"
done

# What the image is built from: when this changes, the image is rebuilt.
STAMP="$OUT.stamp"
SOURCE_HASH=$( (cd "$GUEST_DIR" && cat "${GUEST_FILES[@]}" "$REPO_DIR/scripts/$PROG") | sha256sum | cut -d' ' -f1)

# --- up to date? --------------------------------------------------------------
if [ "$FORCE" = 0 ] && [ -f "$OUT" ]; then
    # -U: the image may be open in a running guest.
    if qemu-img info -U --output=json "$OUT" 2>/dev/null | grep -q '"format": *"qcow2"' &&
        qemu-img check -U -q "$OUT" >/dev/null 2>&1; then
        if [ "$(cat "$STAMP" 2>/dev/null)" = "$SOURCE_HASH" ]; then
            echo "guest image $OUT is up to date"
            exit 0
        fi
        log "$OUT was built from other guest files: rebuilding"
    else
        log "$OUT exists but is not a valid qcow2 image: rebuilding"
    fi
fi

OUT_DIR=$(dirname "$OUT")
[ -d "$OUT_DIR" ] || die "output directory $OUT_DIR does not exist"
TMP_OUT="$OUT.tmp"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/guest-image.XXXXXX")
cleanup() {
    rm -rf "$WORK"
    rm -f "$TMP_OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- packages -------------------------------------------------------------------
mkdir -p "$CACHE_DIR" || die "cannot create cache directory $CACHE_DIR (set GUEST_CACHE_DIR)"

APT_OPTS=()
# As root, apt-get download would warn that the _apt sandbox user cannot
# write to the cache directory.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)

# The candidate version of a package, or nothing if apt does not know it.
candidate_version() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2; exit }'
}

# A cached .deb of package $1 at version $2 (any version if $2 is empty).
cached_deb() {
    local pkg=$1 ver=$2 f
    # Newest first.
    for f in $(ls -t "$CACHE_DIR/${pkg}"_*.deb 2>/dev/null); do
        [ "$(dpkg-deb -f "$f" Package 2>/dev/null)" = "$pkg" ] || continue
        if [ -z "$ver" ] || [ "$(dpkg-deb -f "$f" Version 2>/dev/null)" = "$ver" ]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}

# Print the path of a .deb of package $1, downloading it into the cache if needed.
fetch_deb() {
    local pkg=$1 ver deb
    ver=$(candidate_version "$pkg")
    if [ -z "$ver" ]; then
        deb=$(cached_deb "$pkg" "") ||
            die "apt does not know package $pkg and it is not cached in $CACHE_DIR (run apt-get update?)"
        log "apt does not know $pkg; using cached $(basename "$deb")"
        echo "$deb"
        return
    fi
    if deb=$(cached_deb "$pkg" "$ver"); then
        log "using cached $(basename "$deb")"
    else
        log "downloading $pkg $ver"
        (cd "$CACHE_DIR" && apt-get "${APT_OPTS[@]}" -q download "$pkg=$ver" >&2) ||
            die "apt-get download $pkg=$ver failed"
        deb=$(cached_deb "$pkg" "$ver") || die "downloaded $pkg but cannot find its .deb in $CACHE_DIR"
    fi
    echo "$deb"
}

# Debian's cloud kernel, for virtual machines: its image is LZ4-compressed, where the
# standard kernel's is XZ, and under TCG (no KVM) decompressing the XZ one cost about
# half of a boot: 8.1 CPU-seconds to the serial shell with the standard kernel, 4.3 with
# this one (measured side by side on a 2-core Xeon, QEMU 7.2). It has every driver the
# guest uses (virtio, the PS/2 keyboard, the VGA text console, the serial console).
# linux-image-cloud-amd64 is a metapackage: the kernel is in the versioned package it
# depends on (e.g. linux-image-6.1.0-57-cloud-amd64).
KMETA=linux-image-cloud-amd64
KPKG=$(apt-cache depends "$KMETA" 2>/dev/null |
    sed -n 's/^ *|\{0,1\}Depends: <\{0,1\}\(linux-image-[0-9][^ >]*\)>\{0,1\}$/\1/p' | head -n1)
if [ -z "$KPKG" ]; then
    # Offline and apt knows nothing: fall back to the newest cached kernel.
    kdeb=$(ls -t "$CACHE_DIR"/linux-image-[0-9]*-cloud-amd64_*.deb 2>/dev/null | head -n1) ||
        true
    [ -n "$kdeb" ] || die "cannot resolve $KMETA (run apt-get update?) and no cloud kernel is cached in $CACHE_DIR"
    KPKG=$(dpkg-deb -f "$kdeb" Package)
fi
KERNEL_DEB=$(fetch_deb "$KPKG")
BUSYBOX_DEB=$(fetch_deb busybox-static)

# --- unpack ---------------------------------------------------------------------------
log "unpacking $(basename "$KERNEL_DEB") and $(basename "$BUSYBOX_DEB")"
mkdir -p "$WORK/kernel" "$WORK/busybox"
# Only the kernel and the few modules we need (a full dpkg-deb -x writes 400 MB).
patterns=('./boot/vmlinuz-*' './lib/modules/*/modules.builtin')
for mod in "${MODULES[@]}"; do
    patterns+=("./lib/modules/*/$mod.ko*")
done
if ! dpkg-deb --fsys-tarfile "$KERNEL_DEB" |
    tar -x -C "$WORK/kernel" --wildcards --wildcards-match-slash "${patterns[@]}" 2>"$WORK/tar.err"; then
    # A module built into the kernel matches nothing, which is fine (checked below).
    if grep -v -e 'Not found in archive' -e 'Exiting with failure status' "$WORK/tar.err" | grep -q .; then
        cat "$WORK/tar.err" >&2
        die "cannot unpack $KERNEL_DEB"
    fi
fi
dpkg-deb -x "$BUSYBOX_DEB" "$WORK/busybox"

VMLINUZ=$(ls "$WORK"/kernel/boot/vmlinuz-* 2>/dev/null | head -n1)
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $(basename "$KERNEL_DEB")"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR="$WORK/kernel/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no lib/modules/$KVER in $(basename "$KERNEL_DEB")"
BUSYBOX="$WORK/busybox/bin/busybox"
[ -x "$BUSYBOX" ] || die "no /bin/busybox in $(basename "$BUSYBOX_DEB")"

# --- initramfs ------------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,lib/modules/guest,dev,proc,sys,tmp,run,root,var/log}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# busybox --install would point the links at /proc/self/exe: make them here.
"$BUSYBOX" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done

install -m 0755 "$GUEST_DIR/init" "$ROOT/init"
install -m 0644 "$GUEST_DIR/inittab" "$ROOT/etc/inittab"
install -m 0644 "$GUEST_DIR/profile" "$ROOT/etc/profile"
install -m 0755 "$GUEST_DIR/acpi-power" "$ROOT/etc/acpi/PWRF/00000080"
install -m 0755 "$GUEST_DIR/udhcpc.script" "$ROOT/etc/udhcpc.script"
install -m 0755 "$GUEST_DIR/net-up" "$ROOT/sbin/net-up"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
echo demo-guest > "$ROOT/etc/hostname"
# The kernel opens /dev/console before devtmpfs is mounted (guest/init copes
# without it, but the kernel then warns on the console).
if [ "$(id -u)" = 0 ]; then
    mknod -m 0600 "$ROOT/dev/console" c 5 1 2>/dev/null || true
fi

: > "$ROOT/lib/modules/guest/order"
for mod in "${MODULES[@]}"; do
    ko=$(find "$MODDIR/kernel" \( -name "$mod.ko" -o -name "$mod.ko.xz" -o -name "$mod.ko.zst" \
        -o -name "$mod.ko.gz" \) | head -n1)
    if [ -z "$ko" ]; then
        if grep -q "/$mod\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; then
            continue    # built into this kernel
        fi
        die "kernel module $mod not found in $(basename "$KERNEL_DEB")"
    fi
    dst="$ROOT/lib/modules/guest/$mod.ko"
    case $ko in
        *.xz) xz -dc "$ko" > "$dst" ;;
        *.zst) zstd -qdc "$ko" > "$dst" ;;
        *.gz) gzip -dc "$ko" > "$dst" ;;
        *) cp "$ko" "$dst" ;;
    esac
    echo "$mod" >> "$ROOT/lib/modules/guest/order"
done

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --quiet -o -H newc -R 0:0) | gzip -9 -n > "$WORK/initrd.gz"

# --- disk -----------------------------------------------------------------------------------
# Everything is written into one sparse raw file at the partitions' offsets: no loop
# devices, no mounts.
cp "$VMLINUZ" "$WORK/vmlinuz"
cp "$GUEST_DIR/syslinux.cfg" "$WORK/syslinux.cfg"
DISK="$WORK/disk.img"
truncate -s $((DISK_SECTORS * 512)) "$DISK"
sfdisk --quiet "$DISK" <<EOF_PARTITIONS
label: dos
start=$BOOT_START, size=$BOOT_SECTORS, type=6, bootable
start=$HOME_START, size=$HOME_SECTORS, type=83
EOF_PARTITIONS
dd if="$SYSLINUX_MBR" of="$DISK" bs=440 count=1 conv=notrunc status=none
# (mkfs.vfat warns that the file is larger than the file system: that is the point.)
fat_log=$(mkfs.vfat -F 16 -n DEMOGUEST --offset "$BOOT_START" -h "$BOOT_START" "$DISK" \
    $((BOOT_SECTORS / 2)) 2>&1) || { echo "$fat_log" >&2; die "mkfs.vfat failed"; }
syslinux --install --offset $((BOOT_START * 512)) "$DISK"
mcopy -i "$DISK@@$((BOOT_START * 512))" "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg" ::
# A small journal: the home file system is mostly empty and guests have little RAM.
mkfs.ext4 -q -F -L home -J size=4 -E "offset=$((HOME_START * 512))" "$DISK" $((HOME_SECTORS / 2))k
rm -f "$TMP_OUT"
qemu-img convert -f raw -O qcow2 "$DISK" "$TMP_OUT"
mv -f "$TMP_OUT" "$OUT"
echo "$SOURCE_HASH" > "$STAMP"

log "built $OUT (kernel $KVER, $(du -h "$OUT" | cut -f1) on disk," \
    "initrd $(du -h "$WORK/initrd.gz" | cut -f1))"
