"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Logical cores this process may run on (its CPU affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
