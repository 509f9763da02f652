"""Loaded by every Python process a fast test starts (tests/fast_layer.py puts this folder
on PYTHONPATH): the fast layer's guard applies there too."""

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_portal_fast_guard", Path(__file__).with_name("guard.py")
)
assert _spec is not None and _spec.loader is not None
_guard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_guard)
_guard.install_in_child(getattr(sys, "orig_argv", sys.argv))
