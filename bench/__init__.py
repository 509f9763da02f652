"""Measurements of the portal (not pass/fail tests): run ``.venv/bin/python bench/run.py``."""
