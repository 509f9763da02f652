"""Tests for the in-browser console: RFB protocol, VNC authentication."""
