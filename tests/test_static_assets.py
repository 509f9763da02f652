"""Static assets a browser would silently mis-read: a stylesheet whose braces do not
balance drops every rule after the fault (a merge once lost a closing brace, and with it
the dashboard's phone cards and ellipses)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parent.parent / "static"
STYLESHEETS = sorted(p for p in STATIC.rglob("*.css") if "vendor" not in p.parts)


@pytest.mark.parametrize("path", STYLESHEETS, ids=lambda p: p.name)
def test_stylesheet_braces_balance(path: Path) -> None:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)  # comments may hold braces
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        depth += line.count("{") - line.count("}")
        assert depth >= 0, f"{path.name}:{number}: a closing brace without its opening"
    assert depth == 0, f"{path.name}: {depth} block(s) never closed"


@pytest.mark.django_db  # the test client's request signals close database connections
def test_static_files_are_sent_whole_not_streamed(client) -> None:  # type: ignore[no-untyped-def]
    """vms.web.middleware.BufferedStaticFilesMiddleware: no static file takes Django's
    streaming path under ASGI (a thread per file; a daphne once stopped answering
    part-way through a console page's modules)."""
    source = STATIC / "vendor" / "novnc" / "core" / "rfb.js"
    response = client.get("/static/vendor/novnc/core/rfb.js")
    assert response.status_code == 200 and not response.streaming
    assert response.content == source.read_bytes()
    assert response["Content-Type"].startswith("text/javascript")
    assert int(response["Content-Length"]) == source.stat().st_size
    assert response["ETag"] and response["Last-Modified"]

    again = client.get("/static/vendor/novnc/core/rfb.js", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304

    part = client.get("/static/vendor/novnc/core/rfb.js", HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and not part.streaming
    assert part.content == source.read_bytes()[10:20]
    assert part["Content-Range"] == f"bytes 10-19/{source.stat().st_size}"
