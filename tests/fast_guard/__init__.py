"""The fast layer's run-time guard (guard.py), also loaded by every Python process a fast
test starts (sitecustomize.py, put on their PYTHONPATH)."""
