# Defaults shared by the scripts; every one can be overridden from the environment.
# (Django reads the same variables; see README "Configuration".)
# REDIS_URL: unset means the portal's own Redis with its generated password
# (scripts/portal-redis, portal/localredis.py); Django builds that URL itself.
export DEMO_GUEST_IMAGE="${DEMO_GUEST_IMAGE:-/var/lib/desktop-portal/images/demo-desktop.qcow2}"
export PORTAL_BIND="${PORTAL_BIND:-127.0.0.1:8000}"
# The portal's SPICE CA and certificates (scripts/setup.sh makes them; empty: plain SPICE).
export SPICE_TLS_DIR="${SPICE_TLS_DIR-/etc/desktop-portal/spice-tls}"
