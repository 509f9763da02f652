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
