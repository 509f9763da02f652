"""Services: the only writers of desktop state (docs/architecture.md), one package per
domain. Pages, the API, the tasks and the consoles call these; these call the hypervisor
layer (`vms.hypervisor`) and never the other way round.

    core/      audit, errors, locks, the task queue, the state-machine helper
    desktops/  the action table, transitions, requests, the worker kit, lifecycle, the
               domain spec, live events, quotas, thumbnails
    disks/     snapshots, backups, restores, disk copies, disk leases
    catalog/   templates, images, template versions
    fleet/     hosts, membership, heartbeat, placement, migration, recovery, reconcile
    networks/  desktop networks, egress (the management plane desktops may not reach)
    metrics/   sampling, history, the live push, usage reports
    consoles/  console rules: tickets, admission, arming, sessions, SPICE
    demo       first-run set-up of a single machine (roles, local host, demo template)
"""
