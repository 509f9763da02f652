"""Loading every services module, for the registries its modules fill when imported
(the state machines, `vms.services.core.state_machine`; the long-job kinds,
`vms.services.core.long_jobs`): a reader of a registry sees every entry without a list
of the modules that register one."""

from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.cache
def services_load() -> int:
    """Import every module under vms.services (once per process); how many there are."""
    import vms.services

    names = [
        info.name for info in pkgutil.walk_packages(vms.services.__path__, prefix="vms.services.")
    ]
    for name in names:
        importlib.import_module(name)
    return len(names)
