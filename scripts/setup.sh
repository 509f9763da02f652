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
  # No libvirt-daemon-system: it drags in systemd, udev and firewalls.
  apt_install qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu \
    libvirt-clients libvirt-dev pkg-config gcc python3-dev python3-venv \
    syslinux syslinux-common mtools dosfstools e2fsprogs fdisk cpio gzip ca-certificates procps
  # Desktop networks (docs/networks.md): libvirt's network driver runs dnsmasq and iptables,
  # its nwfilter driver ebtables and iptables, and clean-traffic comes with the config package
  # (both drivers themselves ship in libvirt-daemon; no libvirt-daemon-system).
  apt_install dnsmasq-base iptables ebtables libvirt-daemon-config-nwfilter
  # openssl makes the lab hosts' TLS certificates (scripts/lab-host) and the SPICE CA; ssh is
  # the client of qemu+ssh:// hosts (docs/hypervisors.md).
  apt_install redis-tools openssl openssh-client
  if ! command -v redis-server >/dev/null && { [[ -z "${REDIS_URL:-}" ]] || local_redis; }; then
    apt_install redis-server
  fi
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

local_redis() { [[ "${REDIS_URL:-}" =~ ^redis://(127\.0\.0\.1|localhost)(:6379)?(/|$) ]]; }

# Unset REDIS_URL (the default): the portal's own Redis, with a generated password
# (scripts/portal-redis). An explicit REDIS_URL must answer; the historical local default
# (127.0.0.1:6379, no password) is still started for it when nothing answers there. The URL
# may carry a password: it is never printed.
start_redis() {
  if [[ -z "${REDIS_URL:-}" ]]; then scripts/portal-redis; return; fi
  if redis-cli --no-auth-warning -u "$REDIS_URL" ping >/dev/null 2>&1; then return 0; fi
  if ! local_redis; then
    echo "The Redis of REDIS_URL does not answer; start it or fix REDIS_URL." >&2; exit 1
  fi
  say "Starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/portal.log
  for _ in $(seq 50); do
    redis-cli --no-auth-warning -u "$REDIS_URL" ping >/dev/null 2>&1 && return 0; sleep 0.1
  done
  echo "Redis did not come up; see /var/log/redis/portal.log" >&2; exit 1
}

# --- SPICE over TLS (begin) ----------------------------------------------------------------
# The portal's own SPICE CA, made once in $SPICE_TLS_DIR. It signs QEMU's SPICE certificate
# (libvirt's spice_tls_x509_cert_dir: ca-cert.pem, server-cert.pem, server-key.pem; every
# host set up from this machine uses it, lab hosts too) and the SPICE proxy's, which
# remote-viewer checks (the .vv file's ca= and host-subject=). Runs before libvirtd starts,
# so that its SPICE displays get a TLS port; a libvirtd already running needs a restart.
SPICE_DISPLAY_CERT_NAME=spice-display.desktop-portal  # vms/services/consoles/spiceproxy.py

spice_tls_cert() {  # NAME SUBJECT_CN SAN: NAME-cert.pem and NAME-key.pem, signed by the CA
  local dir=$SPICE_TLS_DIR name=$1 cn=$2 san=$3
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=Desktop Portal/CN=$cn" \
    -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca-cert.pem" -CAkey "$dir/private/ca-key.pem" \
    -CAcreateserial -CAserial "$dir/private/ca-cert.srl" -days 1825 -out "$dir/$name-cert.pem" -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=$san" "subjectKeyIdentifier=hash" \
      "authorityKeyIdentifier=keyid") 2>/dev/null
  rm -f "$dir/$name.csr"
}

spice_tls() {
  [[ -n "$SPICE_TLS_DIR" ]] || return 0
  local dir=$SPICE_TLS_DIR proxy_host san
  if [[ ! -f $dir/ca-cert.pem ]]; then
    say "Making the portal's SPICE CA in $dir"
    mkdir -p "$dir/private" && chmod 0755 "$dir" && chmod 0700 "$dir/private"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/O=Desktop Portal/CN=Desktop Portal SPICE CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$dir/private/ca-key.pem" -out "$dir/ca-cert.pem" 2>/dev/null
  fi
  if [[ ! -f $dir/server-cert.pem ]]; then  # QEMU's (libvirt's file names)
    spice_tls_cert server "$SPICE_DISPLAY_CERT_NAME" "DNS:$SPICE_DISPLAY_CERT_NAME"
    # QEMU runs as libvirt's unprivileged user (qemu_users, first): its group reads the key.
    chgrp libvirt-qemu "$dir/server-key.pem"
    chmod 0640 "$dir/server-key.pem"
  fi
  if [[ ! -f $dir/proxy-cert.pem ]]; then  # the SPICE proxy's, for the host clients reach
    proxy_host=${SPICE_PROXY_URL:-http://${SPICE_PROXY_BIND:-127.0.0.1:6082}}
    proxy_host=${proxy_host#*://}; proxy_host=${proxy_host%:*}
    proxy_host=${proxy_host#[}; proxy_host=${proxy_host%]}
    [[ $proxy_host == 0.0.0.0 ]] && proxy_host=127.0.0.1
    if [[ $proxy_host =~ ^[0-9.]+$ || $proxy_host == *:* ]]; then san="IP:$proxy_host"; else san="DNS:$proxy_host"; fi
    spice_tls_cert proxy "$proxy_host" "$san"
    chmod 0600 "$dir/proxy-key.pem"
  fi
  local conf=/etc/libvirt/qemu.conf
  if grep -q '^spice_tls = 1' "$conf" 2>/dev/null &&
    grep -q "^spice_tls_x509_cert_dir = \"$dir\"" "$conf"; then
    return 0
  fi
  # Any older spice_tls lines go first: libvirt would read the first of two, and QEMU
  # would keep a CA the proxy no longer trusts.
  touch "$conf"
  sed -i -E '/^[[:space:]]*spice_tls(_x509_cert_dir)?[[:space:]]*=/d' "$conf"
  printf 'spice_tls = 1\nspice_tls_x509_cert_dir = "%s"\n' "$dir" >>"$conf"
  LIBVIRTD_RESTART=1  # a running libvirtd reads qemu.conf at start only (start_libvirt)
}
# --- SPICE over TLS (end) ------------------------------------------------------------------

# Guests' QEMU runs as libvirt-qemu, never root: libvirt hands each guest its disks and
# files while it runs (dynamic_ownership and remember_owner, on by default).
QEMU_USER=libvirt-qemu

# What Debian's udev does where it runs: /dev/kvm for group kvm, and the guests' user in it.
# Without it libvirt finds that the guests' user cannot open /dev/kvm while QEMU's probe
# found KVM, takes its cached capabilities for stale and probes QEMU again on every call
# (4 s each, measured on a lab host: "KVM was enabled when probing ..., but it is not
# available now"). That, not the user itself, is why qemu.conf once said root.
# Succeeds when it put the guests' user in group kvm (libvirtd reads a user's groups at
# start only).
kvm_access() {
  [[ -c /dev/kvm ]] || return 1
  getent group kvm >/dev/null || groupadd -r kvm
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
  id -nG "$QEMU_USER" | grep -qw kvm && return 1
  usermod -aG kvm "$QEMU_USER"
}

# qemu.conf's user and group: the guests' user. A machine set up before (user = "root")
# is moved over, and its running libvirtd restarted to read it; running guests go on (as
# root until their next start).
qemu_user() {
  local conf=/etc/libvirt/qemu.conf
  if grep -q "^user = \"$QEMU_USER\"" "$conf" 2>/dev/null &&
    grep -q "^group = \"$QEMU_USER\"" "$conf"; then
    return 1
  fi
  say "Guests' QEMU runs as $QEMU_USER (qemu.conf)"
  touch "$conf"
  sed -i -E '/^[[:space:]]*(user|group)[[:space:]]*=/d' "$conf"
  printf 'user = "%s"\ngroup = "%s"\n' "$QEMU_USER" "$QEMU_USER" >>"$conf"
}

# The machine's own libvirtd (its pid file; lab hosts' libvirtds have their own).
stop_libvirtd() {
  local pid
  pid="$(cat /run/libvirtd.pid 2>/dev/null)" || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  say "Restarting libvirtd to read qemu.conf"
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "libvirtd ($pid) did not stop; stop it and run set-up again" >&2; exit 1
}

# The guests' user and group (the QEMU driver fails without them; the SPICE key is theirs).
qemu_users() {
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}

start_libvirt() {
  local restart=${LIBVIRTD_RESTART:-0}
  if kvm_access; then restart=1; fi
  if qemu_user; then restart=1; fi
  if [[ $restart -eq 1 ]]; then stop_libvirtd; fi
  mkdir -p /var/log/libvirt /var/lib/libvirt/images /run/libvirt /var/lib/desktop-portal/images
  # The guests' user must pass through to the pool, the images and the backup folders
  # (not list them); folders an older portal made 0700 are opened the same way (the
  # portal itself makes them 0711, vms/services/disks/backups.py).
  chmod o+x /var/lib/desktop-portal
  local backups="${BACKUP_DIR:-/var/lib/desktop-portal/backups}"
  if [[ -d "$backups" ]]; then
    find "$backups" -maxdepth 1 -type d -perm 0700 -exec chmod 0711 {} +
  fi
  pgrep -x virtlogd >/dev/null || { say "Starting virtlogd"; virtlogd -d; }
  if ! { [[ -f /run/libvirtd.pid ]] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; }; then
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
qemu_users
spice_tls  # SPICE over TLS: before libvirtd starts
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
