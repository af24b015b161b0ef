"""Peak resident memory of this process, shared by both sides of bench/ppo_step.py (stdlib only)."""

from __future__ import annotations

import resource


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM), so that model loading is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS in MB since the last reset (VmHWM), or the process maximum where /proc has none."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
