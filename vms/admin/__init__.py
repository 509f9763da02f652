"""The admin pages: templates (imported from a qcow2 by path or upload), assignments,
quotas, hosts with their allocation and health, every desktop with its actions, the
audit log and console sessions. One module per kind of page; importing this package
registers them all (Django's autodiscover imports `vms.admin`).

Desktop state is read-only here: it changes only through the services.
"""

from vms.admin import audit, desktops, hosts, networks, quotas, site, templates

__all__ = ["audit", "desktops", "hosts", "networks", "quotas", "site", "templates"]
