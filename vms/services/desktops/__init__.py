"""Desktops: everything about one desktop's life.

actions      the action table (one entry per action; tasks, routes, buttons read it)
transitions  the desktop state table, through core.state_machine
requests     people's requests: desktop_create, desktop_act, desktop_rename
worker       the worker kit: load, hypervisor, progress, advance, fail
lifecycle    the worker functions of provision, start, stop, reboot, delete
domain_spec  the libvirt domain of a desktop (pure)
events       live updates to open pages (Channels)
quotas       effective limits, usage, the launch check
thumbnails   the screenshots pages show
"""
