#!/usr/bin/env bash
# Everything the portal needs on a Debian 12 machine, installed and started where missing.
# Safe to run again: each step checks first and does nothing when its work is done.
#
#   scripts/setup.sh            # what `scripts/run` needs
#   scripts/setup.sh --tests    # plus PostgreSQL and Chromium for `scripts/test`
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FOR_TESTS=0
[[ "${1:-}" == "--tests" ]] && FOR_TESTS=1

# shellcheck source=scripts/env.sh
source scripts/env.sh

NOVNC_VERSION=1.7.0
NOVNC_INTEGRITY="sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA=="
# spice-html5 (the SPICE client of SPICE desktops' console page): plain ES modules.
SPICE_HTML5_VERSION=0.2.1
SPICE_HTML5_INTEGRITY="sha512-NY86i+x/0ldKK89enXghsXCzWwfb5DQ91hQFu9hbyLcAfCVn+ZKoYsw7xUWX6/HQBRrdu/4F1id7SdOwNqpG9g=="
# uPlot (the monitoring charts): one ES module and its stylesheet.
UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/setup.sh installs packages and starts libvirtd: run it as root." >&2
  exit 1
fi

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  say "Installing Debian packages: ${missing[*]}"
  if [[ $apt_updated -eq 0 ]]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_packages() {
  # No libvirt-daemon-system: it drags in systemd, udev and firewalls (DESIGN.md section 5).
  apt_install qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu \
    libvirt-clients libvirt-dev pkg-config gcc python3-dev python3-venv \
    syslinux syslinux-common mtools dosfstools e2fsprogs fdisk cpio gzip ca-certificates procps
  # Desktop networks (docs/networks.md): libvirt's network driver runs dnsmasq and iptables,
  # its nwfilter driver ebtables and iptables, and clean-traffic comes with the config package
  # (both drivers themselves ship in libvirt-daemon; no libvirt-daemon-system).
  apt_install dnsmasq-base iptables ebtables libvirt-daemon-config-nwfilter
  apt_install redis-tools openssl
  if ! command -v redis-server >/dev/null && local_redis; then apt_install redis-server; fi
  command -v npm >/dev/null || apt_install npm
  if [[ $FOR_TESTS -eq 1 ]]; then
    apt_install chromium chromium-driver tesseract-ocr tesseract-ocr-eng wrk
    # remote-viewer through the SPICE proxy, on a virtual X screen, screenshotted for OCR.
    apt_install virt-viewer xvfb imagemagick
    # promtool and a Prometheus server for the /metrics tests (started by the tests themselves).
    apt_install prometheus
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
  fi
}

local_redis() { [[ "$REDIS_URL" =~ ^redis://(127\.0\.0\.1|localhost)(:6379)?(/|$) ]]; }

start_redis() {
  if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then return 0; fi
  if ! local_redis; then
    echo "Redis at $REDIS_URL does not answer; start it or fix REDIS_URL." >&2; exit 1
  fi
  say "Starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/portal.log
  for _ in $(seq 50); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "Redis did not come up; see /var/log/redis/portal.log" >&2; exit 1
}

start_libvirt() {
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  # Without these, libvirtd re-probes QEMU on every call, which takes seconds.
  grep -q '^user = "root"' /etc/libvirt/qemu.conf 2>/dev/null || echo 'user = "root"' >> /etc/libvirt/qemu.conf
  grep -q '^group = "root"' /etc/libvirt/qemu.conf 2>/dev/null || echo 'group = "root"' >> /etc/libvirt/qemu.conf
  mkdir -p /var/log/libvirt /var/lib/libvirt/images /run/libvirt /var/lib/desktop-portal/images
  pgrep -x virtlogd >/dev/null || { say "Starting virtlogd"; virtlogd -d; }
  if ! pgrep -x libvirtd >/dev/null; then
    say "Starting libvirtd (the first call probes QEMU, ~8 s)"
    libvirtd -d
  fi
  for _ in $(seq 60); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.5; done
  if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "libvirtd does not answer on qemu:///system; see /var/log/libvirt/libvirtd.log" >&2; exit 1
  fi
  standard_nwfilters
}

# A libvirtd started before libvirt-daemon-config-nwfilter was installed has not read the
# standard filters (clean-traffic and the filters it takes in): define them now.
standard_nwfilters() {
  virsh -q -c qemu:///system nwfilter-list | grep -qw clean-traffic && return 0
  say "Defining libvirt's standard nwfilters"
  local f
  for f in /etc/libvirt/nwfilter/*.xml; do
    virsh -q -c qemu:///system nwfilter-define "$f" >/dev/null
  done
}

start_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
  say "Starting PostgreSQL"
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
}

ensure_test_database_role() {
  # The tests connect as portal/portal over TCP; works with trust or password auth.
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='portal'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE portal LOGIN CREATEDB PASSWORD 'portal'\""
}

python_env() {
  local python=python3.11
  command -v "$python" >/dev/null || python=python3
  if [[ ! -x .venv/bin/python ]]; then
    say "Creating the virtualenv (.venv)"
    "$python" -m venv .venv
  fi
  local stamp=.venv/.requirements.sha256
  if ! sha256sum -c --status "$stamp" 2>/dev/null; then
    say "Installing Python packages from requirements.txt"
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    sha256sum requirements.txt > "$stamp"
  fi
}

# npm_asset NAME PACKAGE VERSION INTEGRITY DEST COPY... : fetch PACKAGE@VERSION with npm
# pack, check the tarball's sha512 against INTEGRITY, and copy the listed paths (relative to
# the package) into DEST. Done once per version (DEST/.version).
npm_asset() {
  local name=$1 package=$2 version=$3 integrity=$4 dest=$5
  shift 5
  if [[ -f $dest/.version && $(cat "$dest/.version") == "$version" ]]; then return 0; fi
  say "Fetching $name $version from the npm registry"
  local work tarball actual
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$package@$version" >/dev/null 2>&1)
  tarball=$(ls "$work"/*.tgz)
  actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [[ "$actual" != "$integrity" ]]; then
    echo "$name tarball integrity mismatch: $actual" >&2; rm -rf "$work"; exit 1
  fi
  tar -xzf "$tarball" -C "$work"
  rm -rf "$dest" && mkdir -p "$dest"
  local item
  for item in "$@"; do cp -r "$work/package/$item" "$dest/"; done
  echo "$version" > "$dest/.version"
  rm -rf "$work"
}

novnc_assets() {
  npm_asset noVNC @novnc/novnc "$NOVNC_VERSION" "$NOVNC_INTEGRITY" static/vendor/novnc \
    core vendor LICENSE.txt
}

spice_html5_assets() {
  # Only the modules: the package's own page and its ES-module loader for old browsers stay out.
  npm_asset spice-html5 @spice-project/spice-html5 "$SPICE_HTML5_VERSION" \
    "$SPICE_HTML5_INTEGRITY" static/vendor/spice-html5 src COPYING.LESSER
  rm -rf static/vendor/spice-html5/src/thirdparty/browser-es-module-loader
}

uplot_assets() {
  npm_asset uPlot uplot "$UPLOT_VERSION" "$UPLOT_INTEGRITY" static/vendor/uplot \
    dist/uPlot.esm.js dist/uPlot.min.css LICENSE
}

guest_image() {
  scripts/build-guest-image.sh "$DEMO_GUEST_IMAGE"
}

django_setup() {
  .venv/bin/python manage.py migrate --noinput -v 0
  .venv/bin/python manage.py collectstatic --noinput -v 0
}

install_packages
start_redis
start_libvirt
python_env
novnc_assets
spice_html5_assets
uplot_assets
guest_image
if [[ $FOR_TESTS -eq 1 ]]; then
  start_postgres
  ensure_test_database_role
else
  django_setup
  .venv/bin/python manage.py portal_setup
fi
say "Set-up done"
