"""Whether a process is alive: what the store's stale-scratch sweep and the local stack's pid files ask."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True if `pid` names a process on this machine (another user's counts). A zombie counts as
    alive until its parent reaps it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
