"""A desktop's disk over time (docs/backups.md).

snapshots      requests: take, revert, delete (rows in a pending state)
snapshot_work  the worker side of snapshots and of reset
backups        requests, the schedule and the backup selectors
backup_work    the worker side of backups and in-place restores, expiry, clean-up
restore_copy   copying a backup into a restore's volume (new desktop or in place)
copies         long disk copies on a host (block jobs, cancellable)
leases         whether a QEMU somewhere may still write to a disk (lockd)
"""
