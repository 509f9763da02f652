"""The fleet of hypervisor hosts.

hosts       reaching a host's hypervisor, its capacity, the local host
membership  registering, disabling, maintenance and draining
heartbeat   each host's heartbeat; marking hosts down and up
placement   which host takes a desktop
migration   where a desktop may move, and the live-migration worker
recovery    restarting a lost host's desktops elsewhere, and its worker
reconcile   bringing the database in line with what libvirt has
"""
