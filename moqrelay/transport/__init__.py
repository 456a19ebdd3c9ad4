"""Transport adapters that all present one session interface (see interfaces.py)."""
