"""Desktop networks.

desktop_networks  the admin's networks, templates' networks, desktops' interfaces,
                  and defining them (with their guard) on the hosts
egress            the management plane desktops may not reach (the guard's list)
"""
