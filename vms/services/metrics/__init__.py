"""Monitoring (docs/monitoring.md).

sampling  each host's worker samples its desktops and itself; rates, alerts
history   rolling samples up into 1-minute and 1-hour rows, pruning, chart series
push      pushing fresh values to open pages
usage     usage reports (desktop-hours, console-hours, peaks)
"""
