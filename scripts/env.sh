# Defaults shared by the scripts; every one can be overridden from the environment.
# (Django reads the same variables; see README "Configuration".)
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export DEMO_GUEST_IMAGE="${DEMO_GUEST_IMAGE:-/var/lib/desktop-portal/images/demo-desktop.qcow2}"
export PORTAL_BIND="${PORTAL_BIND:-127.0.0.1:8000}"
