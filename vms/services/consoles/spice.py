"""SPICE desktops in virt-viewer: a .vv file that reaches the guest through the portal's
SPICE proxy (vms.services.consoles.spiceproxy), instead of the in-browser relay."""

from __future__ import annotations

import configparser
import io

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied

from vms.models import ConsoleMode, ConsoleType, Desktop
from vms.selectors import SPICE_FILE_RELAY
from vms.services.consoles.errors import ConsoleRefused, DisplayUnreachable
from vms.services.consoles.sessions import console_session_close, console_session_open
from vms.services.consoles.spice_channels import spice_endpoint
from vms.services.consoles.spiceproxy import (
    spice_display_token,
    spice_file_address,
    spice_file_host,
    spice_grant_issue,
    spice_proxy_url,
)
from vms.services.consoles.tickets import console_ticket_redeem


def console_spice_file_issue(
    *, user: User, desktop: Desktop, ticket: str, source_ip: str | None
) -> str:
    """Trade a console ticket for a virt-viewer (.vv) file that works for one connection
    set opened within `SPICE_FILE_VALID_S`; `desktop` is one the user may see.

    Only for SPICE desktops: a VNC password in a file would skip the relay and its
    view-only filter. virt-viewer has no view-only mode we could enforce, so the ticket must
    be for full control (owners, or help-desk with a reason). The file names the proxy (its
    host name and a fixed port: never the desktop's host, whose address only the grant
    holds), with a one-off credential for one connection set, TLS with the portal's CA
    where the portal has one, and a one-off display token as its password: the proxy terminates
    the SPICE link and sets the display's real password itself, so the file holds no
    password of the display (and does not arm it). The session stays open, and the owner
    sees the notice, for the file's minute, or while the set lives.
    """
    claim = console_ticket_redeem(ticket=ticket)
    if claim is None or claim.user_id != user.pk or claim.desktop_id != str(desktop.pk):
        raise ConsoleRefused("The console ticket is invalid, used or expired. Try again.")
    if claim.mode != ConsoleMode.FULL:
        raise PermissionDenied("A SPICE client file gives full control; ask for a full console.")
    if desktop.template.console_type != ConsoleType.SPICE:
        raise ConsoleRefused("This desktop's display is VNC; open it in the browser.")
    session = console_session_open(claim=claim, relay=SPICE_FILE_RELAY, source_ip=source_ip)
    try:
        endpoint = spice_endpoint(session=session)
    except DisplayUnreachable:
        console_session_close(session_id=session.pk, reason="display unreachable")
        raise
    password = spice_display_token()
    credential = spice_grant_issue(session=session, endpoint=endpoint, display_token=password)
    return virt_viewer_file(
        title=desktop.name, password=password, proxy=spice_proxy_url(credential)
    )


def virt_viewer_file(*, title: str, password: str, proxy: str) -> str:
    """The [virt-viewer] file remote-viewer opens; it asks the client to delete it."""
    config = configparser.ConfigParser(interpolation=None)
    config["virt-viewer"] = {
        "type": "spice",
        "host": spice_file_host(),
        **spice_file_address(),
        "password": password,
        "proxy": proxy,
        "title": title.replace("\n", " "),
        "delete-this-file": "1",
        "toggle-fullscreen": "shift+f11",
        "release-cursor": "shift+f12",
    }
    out = io.StringIO()
    config.write(out)
    return out.getvalue()
